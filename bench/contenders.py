"""Python contenders for the pysockkit benchmarks (driven by bench/run.py).

Usage:  python contenders.py IMPL server SCENARIO COUNT        (prints "READY <port>")
        python contenders.py IMPL client SCENARIO COUNT PORT

IMPL      sk | sk-wb (sk client with write_behind=True) | sk-serve (server:
          sk.serve(workers=0); client: sk) | stdlib | asyncio | zmq |
          floor (rtt64 and shortconn only: the least a CPython program does,
          one socket call to send and one to receive, no framing)
SCENARIO  stream64-per | stream64-batch | stream1m | rtt64 | shortconn
          (stream*: the server receives and measures, the client sends;
           rtt64 / shortconn: the server echoes, the client measures)

Payloads are the same as in cref.c, so any receiver can check any sender:
  64-byte message i: (i mod 65536) as a big-endian u64, then a fixed
                     56-byte pattern (byte k = (k*7+13) & 0xff);
  1 MiB frame i:     byte j = j & 0xff, except the first 8 bytes = (i mod 16)
                     and the last 8 bytes = ~(i mod 16), big-endian u64.
Senders take payloads from rings of prebuilt bytes objects (65536 small ones,
16 big ones) so the benchmark measures transport, not payload building.
Every receiver checks every message: 64-byte messages are compared whole
against the expected payload; 1 MiB frames are checked for exact length and
their first, middle and last 8 bytes.  A mismatch exits with status 3.

The measuring side prints one line "RESULT {json}": count (the messages or
connections timed) and elapsed_s, plus latency percentiles for rtt64.
Sockets are blocking with no timeout (a socket timeout would add a poll() to
every stdlib call); SIGALRM is the safety net, and run.py kills us sooner.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
SMALL = 64
BIG = 1 << 20
RING64 = 65536
MASK64 = RING64 - 1
RING1M = 16
BATCH = 1024  # frames per send_many / hand-made batch (1024 * 68 B = 68 KiB)
RECV_MANY = 4096  # max_frames per recv_many (the default)
ALARM_S = 600

PAT64 = bytes((k * 7 + 13) & 0xFF for k in range(SMALL))
HDR = struct.Struct(">I")
now = time.perf_counter_ns


class VerifyError(Exception):
    pass


def bad(what: str, i: int) -> None:
    raise VerifyError(f"verification failed at message {i}: {what}")


def small_ring() -> list[bytes]:
    tail = PAT64[8:]
    return [i.to_bytes(8, "big") + tail for i in range(RING64)]


def big_ring() -> list[bytes]:
    base = bytes(range(256)) * (BIG // 256)
    out = []
    for k in range(RING1M):
        b = bytearray(base)
        b[:8] = k.to_bytes(8, "big")
        b[-8:] = (~k & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        out.append(bytes(b))
    return out


BIG_HEADS = [k.to_bytes(8, "big") for k in range(RING1M)]
BIG_TAILS = [(~k & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") for k in range(RING1M)]
BIG_MID = bytes(j & 0xFF for j in range(BIG // 2, BIG // 2 + 8))


def check_big(p, i: int) -> None:
    """p: bytes or memoryview of one received 1 MiB payload."""
    k = i % RING1M
    if len(p) != BIG:
        bad(f"length {len(p)}", i)
    if p[:8] != BIG_HEADS[k]:
        bad("first 8 bytes", i)
    if p[-8:] != BIG_TAILS[k]:
        bad("last 8 bytes", i)
    if p[BIG // 2 : BIG // 2 + 8] != BIG_MID:
        bad("middle bytes", i)


def warmup_of(count: int) -> int:
    return min(1000, count // 20)


def ready(port: int) -> None:
    print(f"READY {port}", flush=True)


def result(**kw) -> None:
    print("RESULT " + json.dumps(kw), flush=True)


def latency_result(lat: list[int], elapsed_ns: int) -> None:
    lat.sort()
    n = len(lat)
    result(
        count=n,
        elapsed_s=elapsed_ns / 1e9,
        median_us=lat[n // 2] / 1e3,
        p99_us=lat[(n * 99) // 100] / 1e3,
        min_us=lat[0] / 1e3,
    )


def stdlib_listener() -> socket.socket:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, 0))
    ls.listen(1024)
    return ls


def nodelay(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# --------------------------------------------------------------------------
# pysockkit


def sk_mod():
    import pysockkit as sk  # noqa: PLC0415  (optional: may not be built yet)

    return sk


def sk_framing(sk):
    return sk.Framing(header_size=4)


def sk_server(scen: str, count: int) -> None:
    sk = sk_mod()
    with sk.listen((HOST, 0), framing=sk_framing(sk)) as srv:
        ready(srv.address[1])
        if scen == "shortconn":
            for i in range(count):
                c = srv.accept(timeout=30)
                try:
                    c.send(c.recv(timeout=30), timeout=30)
                finally:
                    c.close()
            return
        conn = srv.accept(timeout=30)
        try:
            if scen == "rtt64":
                recv, send = conn.recv, conn.send
                closed = sk.ConnectionClosed
                while True:
                    try:
                        d = recv()
                    except closed:
                        break
                    send(d)
                return
            if scen == "stream64-per":
                ring = small_ring()
                recv = conn.recv
                if recv() != ring[0]:
                    bad("payload", 0)
                t0 = now()
                for i in range(1, count):
                    if recv() != ring[i & MASK64]:
                        bad("payload", i)
                t1 = now()
                measured = count - 1
            elif scen == "stream64-batch":
                ring = small_ring()
                ring2 = ring + ring
                recv_many = conn.recv_many
                frames = recv_many(max_frames=min(RECV_MANY, count))
                t0 = now()
                n = len(frames)
                if not n or frames != ring2[:n]:
                    bad("payload in first batch", 0)
                i = measured_from = n
                while i < count:
                    frames = recv_many(max_frames=min(RECV_MANY, count - i))
                    n = len(frames)
                    pos = i & MASK64
                    if not n or frames != ring2[pos : pos + n]:
                        bad("payload in batch", i)
                    i += n
                t1 = now()
                measured = count - measured_from
            elif scen == "stream1m":
                recv = conn.recv
                check_big(recv(), 0)
                t0 = now()
                for i in range(1, count):
                    check_big(recv(), i)
                t1 = now()
                measured = count - 1
            else:
                raise SystemExit(f"sk: no server for {scen}")
            try:
                conn.recv(timeout=10)
            except sk.ConnectionClosed:
                pass
            else:
                bad("a frame after the last message", count)
            result(count=measured, elapsed_s=(t1 - t0) / 1e9)
        finally:
            conn.close()


def sk_client(scen: str, count: int, port: int, write_behind: bool = False) -> None:
    sk = sk_mod()
    addr = (HOST, port)
    if scen == "shortconn":
        ring = small_ring()
        call = sk.call
        warm = warmup_of(count)
        t0 = now()
        for i in range(count):
            if i == warm:
                t0 = now()
            p = ring[i & MASK64]
            if call(addr, p, timeout=30) != p:
                bad("reply differs from request", i)
        t1 = now()
        result(count=count - warm, elapsed_s=(t1 - t0) / 1e9)
        return
    conn = sk.connect(addr, timeout=30, framing=sk_framing(sk), write_behind=write_behind)
    try:
        if scen == "stream64-per":
            ring = small_ring()
            send = conn.send
            for i in range(count):
                send(ring[i & MASK64])
        elif scen == "stream64-batch":
            ring = small_ring()
            batches = [ring[k : k + BATCH] for k in range(0, RING64, BATCH)]
            nb = len(batches)
            full, rem = divmod(count, BATCH)
            send_many = conn.send_many
            for j in range(full):
                send_many(batches[j % nb])
            if rem:
                send_many(batches[full % nb][:rem])
        elif scen == "stream1m":
            bigs = big_ring()
            send = conn.send
            for i in range(count):
                send(bigs[i % RING1M])
        elif scen == "rtt64":
            ring = small_ring()
            request = conn.request
            warm = warmup_of(count)
            lat = []
            t_start = now()
            for i in range(count):
                p = ring[i & MASK64]
                if i == warm:
                    t_start = now()
                t0 = now()
                r = request(p, timeout=30)
                t1 = now()
                if r != p:
                    bad("reply differs from request", i)
                if i >= warm:
                    lat.append(t1 - t0)
            latency_result(lat, now() - t_start)
        else:
            raise SystemExit(f"sk: no client for {scen}")
    finally:
        conn.close()


# --------------------------------------------------------------------------
# stdlib blocking sockets


def recv_exact_into(recv_into, mv: memoryview, n: int, i: int) -> None:
    got = 0
    while got < n:
        r = recv_into(mv[got:n])
        if r == 0:
            bad("EOF inside a frame", i)
        got += r


def read_frame_small(s: socket.socket, i: int) -> bytes:
    """One frame from a fresh connection (short-conn): plain recv loop."""
    buf = b""
    while True:
        if len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if n > SMALL:
                bad(f"length {n}", i)
            if len(buf) >= 4 + n:
                return buf[4 : 4 + n]
        chunk = s.recv(4096)
        if not chunk:
            bad("EOF inside a frame", i)
        buf += chunk


def stdlib_server(scen: str, count: int) -> None:
    ls = stdlib_listener()
    ready(ls.getsockname()[1])
    pack = HDR.pack
    if scen == "shortconn":
        for i in range(count):
            c, _ = ls.accept()
            try:
                nodelay(c)
                d = read_frame_small(c, i)
                c.sendall(pack(len(d)) + d)
            finally:
                c.close()
        ls.close()
        return
    conn, _ = ls.accept()
    ls.close()
    nodelay(conn)
    try:
        if scen == "rtt64":
            f = conn.makefile("rb")
            read, sendall = f.read, conn.sendall
            while True:
                h = read(4)
                if not h:
                    break
                d = read(int.from_bytes(h, "big"))
                sendall(h + d)
            return
        if scen == "stream64-per":
            ring = small_ring()
            f = conn.makefile("rb", buffering=65536)
            read = f.read
            frombytes = int.from_bytes

            if read(frombytes(read(4), "big")) != ring[0]:
                bad("payload", 0)
            t0 = now()
            for i in range(1, count):
                if read(frombytes(read(4), "big")) != ring[i & MASK64]:
                    bad("payload", i)
            t1 = now()
            measured = count - 1
            if read(1):
                bad("bytes after the last message", count)
        elif scen == "stream64-batch":
            # One big recv_into, frames parsed in place with struct.
            ring = small_ring()
            cap = 1 << 18
            buf = bytearray(cap)
            mv = memoryview(buf)
            recv_into = conn.recv_into
            unpack_from = HDR.unpack_from
            startswith = buf.startswith
            have = off = i = 0
            t0 = 0
            measured_from = 0
            while i < count:
                if off:
                    rest = have - off
                    buf[:rest] = mv[off:have]
                    have, off = rest, 0
                r = recv_into(mv[have:])
                if r == 0:
                    bad("EOF before the last message", i)
                if not t0:
                    t0 = now()
                    first = True
                else:
                    first = False
                have += r
                while have - off >= 4 and i < count:
                    (n,) = unpack_from(buf, off)
                    if n > SMALL:
                        bad(f"length {n}", i)
                    end = off + 4 + n
                    if end > have:
                        break
                    if n != SMALL or not startswith(ring[i & MASK64], off + 4):
                        bad("payload", i)
                    off = end
                    i += 1
                if first:
                    measured_from = i
            t1 = now()
            measured = count - measured_from
            if have != off or conn.recv(1):
                bad("bytes after the last message", count)
        elif scen == "stream1m":
            hbuf = bytearray(4)
            hmv = memoryview(hbuf)
            pbuf = bytearray(BIG)
            pmv = memoryview(pbuf)
            recv_into = conn.recv_into

            def one(i):
                recv_exact_into(recv_into, hmv, 4, i)
                n = int.from_bytes(hbuf, "big")
                if n > BIG:
                    bad(f"length {n}", i)
                recv_exact_into(recv_into, pmv, n, i)
                check_big(pmv[:n], i)

            one(0)
            t0 = now()
            for i in range(1, count):
                one(i)
            t1 = now()
            measured = count - 1
            if conn.recv(1):
                bad("bytes after the last message", count)
        else:
            raise SystemExit(f"stdlib: no server for {scen}")
        result(count=measured, elapsed_s=(t1 - t0) / 1e9)
    finally:
        conn.close()


def stdlib_client(scen: str, count: int, port: int) -> None:
    addr = (HOST, port)
    pack = HDR.pack
    if scen == "shortconn":
        ring = small_ring()
        warm = warmup_of(count)
        t0 = now()
        for i in range(count):
            if i == warm:
                t0 = now()
            p = ring[i & MASK64]
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                nodelay(s)
                s.connect(addr)
                s.sendall(pack(len(p)) + p)
                if read_frame_small(s, i) != p:
                    bad("reply differs from request", i)
            finally:
                s.close()
        t1 = now()
        result(count=count - warm, elapsed_s=(t1 - t0) / 1e9)
        return
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    nodelay(s)
    s.connect(addr)
    try:
        sendall = s.sendall
        if scen == "stream64-per":
            ring = small_ring()
            for i in range(count):
                p = ring[i & MASK64]
                sendall(pack(len(p)) + p)
        elif scen == "stream64-batch":
            ring = small_ring()
            batches = [ring[k : k + BATCH] for k in range(0, RING64, BATCH)]
            nb = len(batches)
            full, rem = divmod(count, BATCH)
            join = b"".join

            def send_batch(batch):
                # Hand-made framing: header + payload for each, one sendall.
                sendall(join([pack(len(p)) + p for p in batch]))

            for j in range(full):
                send_batch(batches[j % nb])
            if rem:
                send_batch(batches[full % nb][:rem])
        elif scen == "stream1m":
            bigs = big_ring()
            sendmsg = s.sendmsg
            for i in range(count):
                p = bigs[i % RING1M]
                h = pack(len(p))
                sent = sendmsg([h, p])
                if sent < 4 + len(p):  # partial: finish by hand
                    if sent < 4:
                        sendall(h[sent:])
                        sent = 4
                    sendall(memoryview(p)[sent - 4 :])
        elif scen == "rtt64":
            ring = small_ring()
            f = s.makefile("rb")
            read = f.read
            warm = warmup_of(count)
            lat = []
            t_start = now()
            for i in range(count):
                p = ring[i & MASK64]
                if i == warm:
                    t_start = now()
                t0 = now()
                sendall(pack(len(p)) + p)
                r = read(int.from_bytes(read(4), "big"))
                t1 = now()
                if r != p:
                    bad("reply differs from request", i)
                if i >= warm:
                    lat.append(t1 - t0)
            latency_result(lat, now() - t_start)
        else:
            raise SystemExit(f"stdlib: no client for {scen}")
    finally:
        s.close()


# --------------------------------------------------------------------------
# asyncio streams


async def _aio_read_frame(reader, maxlen: int, i: int) -> bytes:
    import asyncio  # noqa: PLC0415

    try:
        n = int.from_bytes(await reader.readexactly(4), "big")
        if n > maxlen:
            bad(f"length {n}", i)
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        bad("EOF inside a frame", i)
        raise  # unreachable


def aio_server(scen: str, count: int) -> None:
    import asyncio  # noqa: PLC0415

    pack = HDR.pack

    async def shortconn():
        done = asyncio.get_running_loop().create_future()
        served = 0

        async def handle(reader, writer):
            nonlocal served
            i = served
            served += 1
            try:
                d = await _aio_read_frame(reader, SMALL, i)
                writer.write(pack(len(d)) + d)
                await writer.drain()
            except BaseException as e:  # report in the main task
                if not done.done():
                    done.set_exception(e)
            finally:
                writer.close()
            if served == count and not done.done():
                done.set_result(None)

        server = await asyncio.start_server(handle, HOST, 0, backlog=1024)
        ready(server.sockets[0].getsockname()[1])
        try:
            await done
        finally:
            server.close()
            await server.wait_closed()

    async def one_conn():
        ls = stdlib_listener()
        ready(ls.getsockname()[1])
        conn, _ = ls.accept()  # blocking is fine: nothing else to do yet
        ls.close()
        # A 1 MiB frame needs a reader limit above it, or the transport is
        # paused and resumed every 128 KiB (the default limit is 64 KiB).
        limit = 4 * BIG if scen == "stream1m" else 2**16
        reader, writer = await asyncio.open_connection(sock=conn, limit=limit)
        try:
            if scen == "rtt64":
                while True:
                    try:
                        h = await reader.readexactly(4)
                    except asyncio.IncompleteReadError as e:
                        if e.partial:
                            raise
                        break
                    d = await reader.readexactly(int.from_bytes(h, "big"))
                    writer.write(h + d)
                return
            if scen == "stream64-per":
                ring = small_ring()
                readexactly = reader.readexactly
                if await _aio_read_frame(reader, SMALL, 0) != ring[0]:
                    bad("payload", 0)
                t0 = now()
                try:
                    for i in range(1, count):
                        n = int.from_bytes(await readexactly(4), "big")
                        if n > SMALL:
                            bad(f"length {n}", i)
                        if await readexactly(n) != ring[i & MASK64]:
                            bad("payload", i)
                except asyncio.IncompleteReadError:
                    bad("EOF before the last message", i)
                t1 = now()
            elif scen == "stream1m":
                check_big(await _aio_read_frame(reader, BIG, 0), 0)
                t0 = now()
                for i in range(1, count):
                    check_big(await _aio_read_frame(reader, BIG, i), i)
                t1 = now()
            else:
                raise SystemExit(f"asyncio: no server for {scen}")
            if await reader.read(1):
                bad("bytes after the last message", count)
            result(count=count - 1, elapsed_s=(t1 - t0) / 1e9)
        finally:
            writer.close()

    asyncio.run(shortconn() if scen == "shortconn" else one_conn())


def aio_client(scen: str, count: int, port: int) -> None:
    import asyncio  # noqa: PLC0415

    pack = HDR.pack

    async def main():
        if scen == "shortconn":
            ring = small_ring()
            warm = warmup_of(count)
            t0 = now()
            for i in range(count):
                if i == warm:
                    t0 = now()
                p = ring[i & MASK64]
                reader, writer = await asyncio.open_connection(HOST, port)
                try:
                    writer.write(pack(len(p)) + p)
                    if await _aio_read_frame(reader, SMALL, i) != p:
                        bad("reply differs from request", i)
                finally:
                    writer.close()
                    await writer.wait_closed()
            t1 = now()
            result(count=count - warm, elapsed_s=(t1 - t0) / 1e9)
            return
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            write = writer.write
            if scen == "stream64-per":
                ring = small_ring()
                for i in range(count):
                    p = ring[i & MASK64]
                    write(pack(len(p)) + p)
                    if i & 1023 == 1023:
                        await writer.drain()
                await writer.drain()
            elif scen == "stream1m":
                bigs = big_ring()
                for i in range(count):
                    p = bigs[i % RING1M]
                    write(pack(len(p)))
                    write(p)
                    await writer.drain()
            elif scen == "rtt64":
                ring = small_ring()
                warm = warmup_of(count)
                lat = []
                t_start = now()
                for i in range(count):
                    p = ring[i & MASK64]
                    if i == warm:
                        t_start = now()
                    t0 = now()
                    write(pack(len(p)) + p)
                    r = await _aio_read_frame(reader, SMALL, i)
                    t1 = now()
                    if r != p:
                        bad("reply differs from request", i)
                    if i >= warm:
                        lat.append(t1 - t0)
                latency_result(lat, now() - t_start)
            else:
                raise SystemExit(f"asyncio: no client for {scen}")
        finally:
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


# --------------------------------------------------------------------------
# pyzmq: PUSH/PULL for the streams, REQ/REP for rtt64


def zmq_server(scen: str, count: int) -> None:
    import zmq  # noqa: PLC0415

    ctx = zmq.Context()
    kind = zmq.REP if scen == "rtt64" else zmq.PULL
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 1000)
    port = s.bind_to_random_port(f"tcp://{HOST}")
    ready(port)
    try:
        if scen == "rtt64":
            recv, send = s.recv, s.send
            for _ in range(count):
                send(recv())
            return
        if scen == "stream64-per":
            ring = small_ring()
            recv = s.recv
            if recv() != ring[0]:
                bad("payload", 0)
            t0 = now()
            for i in range(1, count):
                if recv() != ring[i & MASK64]:
                    bad("payload", i)
            t1 = now()
        elif scen == "stream1m":
            recv = s.recv
            check_big(recv(copy=False).buffer, 0)
            t0 = now()
            for i in range(1, count):
                check_big(recv(copy=False).buffer, i)
            t1 = now()
        else:
            raise SystemExit(f"zmq: no server for {scen}")
        result(count=count - 1, elapsed_s=(t1 - t0) / 1e9)
    finally:
        s.close()
        ctx.term()


def zmq_client(scen: str, count: int, port: int) -> None:
    import zmq  # noqa: PLC0415

    ctx = zmq.Context()
    kind = zmq.REQ if scen == "rtt64" else zmq.PUSH
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 30000)  # let queued messages out before term()
    s.connect(f"tcp://{HOST}:{port}")
    try:
        send = s.send
        if scen == "stream64-per":
            ring = small_ring()
            for i in range(count):
                send(ring[i & MASK64])
        elif scen == "stream1m":
            bigs = big_ring()
            for i in range(count):
                send(bigs[i % RING1M], copy=False)
        elif scen == "rtt64":
            ring = small_ring()
            recv = s.recv
            warm = warmup_of(count)
            lat = []
            t_start = now()
            for i in range(count):
                p = ring[i & MASK64]
                if i == warm:
                    t_start = now()
                t0 = now()
                send(p)
                r = recv()
                t1 = now()
                if r != p:
                    bad("reply differs from request", i)
                if i >= warm:
                    lat.append(t1 - t0)
            latency_result(lat, now() - t_start)
        else:
            raise SystemExit(f"zmq: no client for {scen}")
    finally:
        s.close()
        ctx.term()


# --------------------------------------------------------------------------

def sk_wb_client(scen: str, count: int, port: int) -> None:
    """sk_client on a connection made with write_behind=True (send queues
    small frames and writes them in batches; close writes the rest)."""
    sk_client(scen, count, port, write_behind=True)


def sk_serve_server(scen: str, count: int) -> None:
    """sk.serve(workers=0) echoing (the C reactor, handler on its thread):
    rtt64 (one client) and shortconn (count clients, one exchange each).
    Ends when the clients it expects have closed."""
    sk = sk_mod()
    if scen not in ("rtt64", "shortconn"):
        raise SystemExit(f"sk-serve: no server for {scen}")
    expect = count if scen == "shortconn" else 1
    srv = sk.serve((HOST, 0), framing=sk_framing(sk), workers=0, backlog=1024)
    try:
        ready(srv.address[1])
        while True:
            ex = srv.exits
            if ex.closed + ex.reset >= expect:
                break
            time.sleep(0.005)
        if srv.errors:
            bad(f"server errors {srv.errors[:3]!r}", 0)
    finally:
        srv.close()


# --------------------------------------------------------------------------
# the CPython floor: the least any CPython program can do per exchange


FRAME64 = 4 + SMALL  # the whole 64-byte frame: header + payload


def recv_exact(recv, n: int, i: int) -> bytes:
    """n bytes from recv (a bound socket.recv or os.read of a blocking
    socket): one call when they arrived together, as on loopback."""
    d = recv(n)
    while len(d) < n:
        more = recv(n - len(d))
        if not more:
            bad("EOF inside a frame", i)
        d += more
    return d


def floor_server(scen: str, count: int) -> None:
    """rtt64 / shortconn with no framing at all: the frame is a fixed
    FRAME64 bytes, read whole and written back, on blocking sockets with no
    timeout (os.read/os.write on the accepted fd for shortconn: no socket
    object per client).  Not a usable server (it trusts the length); it is
    the floor of what a CPython server spends per message: one C call to
    receive and one to send, through the eval loop."""
    if scen not in ("rtt64", "shortconn"):
        raise SystemExit(f"floor: no server for {scen}")
    ls = stdlib_listener()
    nodelay(ls)  # inherited by the accepted sockets
    ready(ls.getsockname()[1])
    if scen == "shortconn":
        acc, read, write, close = ls._accept, os.read, os.write, os.close
        for i in range(count):
            fd, _ = acc()
            try:
                d = recv_exact(lambda n, fd=fd: read(fd, n), FRAME64, i)
                write(fd, d)
            finally:
                close(fd)
        ls.close()
        return
    conn, _ = ls.accept()
    ls.close()
    recv, send = conn.recv, conn.send
    try:
        while True:
            d = recv(FRAME64)
            if not d:
                break
            if len(d) < FRAME64:
                d += recv_exact(recv, FRAME64 - len(d), 0)
            send(d)
    finally:
        conn.close()


def floor_client(scen: str, count: int, port: int) -> None:
    """The floor's client: socket.send of the prebuilt frame, one recv of
    FRAME64 bytes, compared whole (shortconn: a _socket.socket per call,
    no Python socket class)."""
    if scen not in ("rtt64", "shortconn"):
        raise SystemExit(f"floor: no client for {scen}")
    frames = [HDR.pack(SMALL) + p for p in small_ring()]
    addr = (HOST, port)
    warm = warmup_of(count)
    if scen == "shortconn":
        import _socket

        sock, tcp, nd = _socket.socket, socket.IPPROTO_TCP, socket.TCP_NODELAY
        t0 = now()
        for i in range(count):
            if i == warm:
                t0 = now()
            f = frames[i & MASK64]
            s = sock()
            try:
                s.setsockopt(tcp, nd, 1)
                s.connect(addr)
                s.send(f)
                if recv_exact(s.recv, FRAME64, i) != f:
                    bad("reply differs from request", i)
            finally:
                s.close()
        t1 = now()
        result(count=count - warm, elapsed_s=(t1 - t0) / 1e9)
        return
    s = socket.create_connection(addr)
    nodelay(s)
    send, recv = s.send, s.recv
    lat = []
    t_start = now()
    try:
        for i in range(count):
            f = frames[i & MASK64]
            if i == warm:
                t_start = now()
            t0 = now()
            send(f)
            r = recv(FRAME64)
            t1 = now()
            if r != f:
                if len(r) < FRAME64:
                    r += recv_exact(recv, FRAME64 - len(r), i)
                if r != f:
                    bad("reply differs from request", i)
            if i >= warm:
                lat.append(t1 - t0)
        latency_result(lat, now() - t_start)
    finally:
        s.close()


IMPLS = {
    "sk": (sk_server, sk_client),
    "sk-serve": (sk_serve_server, sk_client),
    "sk-wb": (sk_server, sk_wb_client),
    "stdlib": (stdlib_server, stdlib_client),
    "asyncio": (aio_server, aio_client),
    "zmq": (zmq_server, zmq_client),
    "floor": (floor_server, floor_client),
}


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[1] not in IMPLS or argv[2] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        return 64
    impl, role, scen, count = argv[1], argv[2], argv[3], int(argv[4])
    if count < 2:
        print("COUNT must be >= 2", file=sys.stderr)
        return 64
    signal.alarm(ALARM_S)  # default action: terminate
    if impl in ("sk", "sk-wb", "sk-serve"):
        try:
            sk_mod()
        except Exception as e:  # noqa: BLE001
            print(f"n/a: import pysockkit failed: {e!r}", file=sys.stderr)
            return 4
    server, client = IMPLS[impl]
    try:
        if role == "server":
            server(scen, count)
        else:
            if len(argv) < 6:
                print("client needs PORT", file=sys.stderr)
                return 64
            client(scen, count, int(argv[5]))
    except VerifyError as e:
        print(f"{impl} {role}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
