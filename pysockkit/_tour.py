"""``python -m pysockkit tour``: a guided run on loopback, printing what
happens at each step.  Every number printed is measured on the spot."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from . import _conn
from ._errors import ConnectionClosed, ConnectionReset, Timeout
from ._net import format_address
from ._serve import serve
from ._types import Framing


def _say(title: str) -> None:
    print(f"\n== {title}")


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1e3:.2f} ms"


def _handler(msg: bytes) -> bytes:
    if msg.startswith(b"sleep "):
        time.sleep(float(msg.split()[1]))
    return msg.upper()


def step_long_connection(addr: _conn.Address) -> None:
    _say("1. A long connection: connect once, exchange many framed messages")
    t0 = time.perf_counter()
    with _conn.connect(addr, timeout=2.0) as conn:
        print(f"   connected {conn.local_address} -> {conn.remote_address} in {_ms(t0)}")
        frame = Framing().encode(b"hello")
        print(f"   on the wire, b'hello' is one frame: {frame.hex(' ')} (4-byte big-endian length + payload)")
        conn.send(b"hello")
        print(f"   sent b'hello', got back {conn.recv(timeout=2.0)!r}")
        n = 10_000
        t0 = time.perf_counter()
        conn.send_many([b"msg %d" % i for i in range(n)])
        got = 0
        while got < n:
            got += len(conn.recv_many(timeout=2.0))
        dt = time.perf_counter() - t0
        print(f"   send_many/recv_many: {n} messages echoed in {dt * 1e3:.1f} ms ({n / dt:,.0f} msg/s round trip)")


def step_request(addr: _conn.Address) -> None:
    _say("2. Synchronous mode: request() waits for the reply, with a timeout")
    with _conn.connect(addr, timeout=2.0) as conn:
        t0 = time.perf_counter()
        print(f"   request(b'ping') -> {conn.request(b'ping', timeout=1.0)!r} in {_ms(t0)}")
        t0 = time.perf_counter()
        try:
            conn.request(b"sleep 0.3", timeout=0.1)
        except Timeout:
            print(f"   request(b'sleep 0.3', timeout=0.1) raised sk.Timeout after {_ms(t0)}")
        print(f"   the connection now owes {conn.pending_replies} reply; it will be discarded when it comes")
        t0 = time.perf_counter()
        reply = conn.request(b"next", timeout=2.0)
        print(f"   request(b'next') -> {reply!r} in {_ms(t0)}: its own reply, not the late one")
        print(f"   late replies dropped so far: {conn.late_replies_dropped}")


def step_short_connection(addr: _conn.Address) -> None:
    _say("3. Short connections: connect, one exchange, close (sk.call)")
    t0 = time.perf_counter()
    reply = _conn.call(addr, b"one shot", timeout=2.0)
    print(f"   sk.call(addr, b'one shot') -> {reply!r} in {_ms(t0)}")
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        _conn.call(addr, b"x", timeout=2.0)
    dt = time.perf_counter() - t0
    print(f"   {n} short connections in {dt * 1e3:.0f} ms ({n / dt:,.0f} connections/s)")
    print("   the side that closes first (here the client) keeps each one in TIME_WAIT for 60 s")


def step_half_close(listener: _conn.Listener) -> None:
    _say("4. Half-close: shutdown('write') sends FIN, the other direction stays open")
    with _conn.connect(listener.address, timeout=2.0) as cli, listener.accept(timeout=2.0) as srv:
        cli.send(b"last request")
        cli.shutdown("write")
        print("   client: sent b'last request', then shutdown('write')")
        print(f"   server: recv -> {srv.recv(timeout=1.0)!r}")
        try:
            srv.recv(timeout=1.0)
        except ConnectionClosed as exc:
            print(f"   server: next recv raised sk.ConnectionClosed: {exc}")
        srv.send(b"answer after your FIN")
        print(f"   client: can still recv -> {cli.recv(timeout=1.0)!r}")


def step_abort(listener: _conn.Listener) -> None:
    _say("5. Abort: abort() sends RST instead of FIN")
    with _conn.connect(listener.address, timeout=2.0) as cli, listener.accept(timeout=2.0) as srv:
        cli.abort()
        print("   client: abort() (SO_LINGER 0, close) - no TIME_WAIT is left behind")
        try:
            srv.recv(timeout=1.0)
        except ConnectionReset as exc:
            print(f"   server: recv raised sk.ConnectionReset: {exc}")


STEPS: list[Callable[[], None]] = []


def run() -> int:
    """Run every step; returns the process exit code."""
    t_all = time.perf_counter()
    print("pysockkit tour: everything below runs on 127.0.0.1 and is measured live")
    with serve(("127.0.0.1", 0), _handler) as server:
        print(f"server listening on {format_address(server.address)} (threaded, replies in upper case)")
        step_long_connection(server.address)
        step_request(server.address)
        step_short_connection(server.address)
    with _conn.listen(("127.0.0.1", 0)) as listener:
        step_half_close(listener)
        step_abort(listener)
    step_heartbeat()
    for extra in STEPS:
        extra()
    print(f"\ntour finished in {time.perf_counter() - t_all:.2f} s")
    return 0


_HB_PEER = """
import sys, time
import pysockkit as sk
conn = sk.connect(("127.0.0.1", int(sys.argv[1])), timeout=5.0,
                  heartbeat=sk.Heartbeat(float(sys.argv[2]), float(sys.argv[3])))
print("ready", flush=True)
time.sleep(30)          # never calls anything: only the C reactor beats
"""


def step_heartbeat() -> None:
    """A heartbeating long connection to a peer process, which is then
    frozen with SIGSTOP: the reactor notices within the heartbeat timeout."""
    import signal
    import subprocess
    import sys

    from ._errors import PeerDead
    from ._types import Heartbeat

    interval, timeout = 0.2, 0.6
    _say(f"6. Long connection with heartbeats (interval {interval} s, timeout {timeout} s)")
    with _conn.listen(("127.0.0.1", 0), heartbeat=Heartbeat(interval, timeout)) as listener:
        peer = subprocess.Popen(
            [sys.executable, "-c", _HB_PEER, str(listener.address[1]), str(interval), str(timeout)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            with listener.accept(timeout=10.0) as conn:
                assert peer.stdout is not None
                peer.stdout.readline()
                print(f"   peer process {peer.pid} connected; neither side calls anything for 1 s")
                time.sleep(1.0)
                st = conn.heartbeat_stats
                lat = conn.latency
                print(f"   beats exchanged by the C reactor: {st['pings_received']} pings received, "
                      f"{st['pongs_sent']} pongs sent; round trip "
                      f"{'unknown' if lat is None else f'{lat * 1e6:.0f} us'}")
                t0 = time.perf_counter()
                peer.send_signal(signal.SIGSTOP)
                print("   SIGSTOP the peer: its kernel still ACKs, TCP alone would not notice")
                try:
                    conn.recv(timeout=10.0)
                except PeerDead as exc:
                    print(f"   recv raised sk.PeerDead after {_ms(t0)}: {exc}")
        finally:
            peer.send_signal(signal.SIGCONT)
            peer.kill()
            peer.wait()


def step_state_lab() -> None:
    """The state lab: every TCP state reproduced live, with how it was made,
    how it was seen and how long the kernel took to get there."""
    from . import lab

    _say("7. The state lab: every TCP state, held live on 127.0.0.1 (sk.lab)")
    t0 = time.perf_counter()
    table = lab.survey("ipv4")
    for line in str(table).splitlines():
        print("   " + line)
    n = sum(o.reached for o in table)
    print(f"   {n} of {len(table)} reproduced in {_ms(t0)}; every socket was released after its row")
    print("   NEW_SYN_RECV is Linux's request socket: sock_diag and ss report it as SYN_RCVD (3)")
    print("   TIME_WAIT has no descriptor (sock_diag only) and stays 60 s; 'with sk.lab.reproduce(state) as scene:' holds one")


STEPS.append(step_state_lab)


def step_modes() -> None:
    """The three message modes side by side, each doing 2000 requests."""
    from . import simplex
    from ._wire import reply_id
    from ._errors import Error
    from ._types import Framing

    n = 2000
    _say("8. Message modes side by side: synchronous, asynchronous duplex, asynchronous simplex")
    with serve(("127.0.0.1", 0), lambda m: m.upper()) as server, _conn.connect(server.address) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            conn.request(b"sync %d" % i, timeout=2.0)
        dt = time.perf_counter() - t0
        print(f"   synchronous   conn.request() one at a time:      {n} in {dt * 1e3:6.1f} ms "
              f"({n / dt:9,.0f} req/s)")

    framing = Framing(correlation=True)
    with _conn.listen(("127.0.0.1", 0), framing=framing) as lst:
        cli = _conn.connect(lst.address, framing=framing)
        srv = lst.accept(timeout=2.0)

        def answer() -> None:
            try:
                while True:
                    batch = srv.recv_many(timeout=5.0)
                    srv.send_many([(reply_id(m[0]), m[1].upper()) for m in batch
                                   if isinstance(m, tuple)])
            except Error:
                pass

        t = threading.Thread(target=answer)
        t.start()
        t0 = time.perf_counter()
        futs = [cli.request_async(b"duplex %d" % i, timeout=5.0) for i in range(n)]
        ok = sum(f.result() == b"DUPLEX %d" % i for i, f in enumerate(futs))
        dt = time.perf_counter() - t0
        print(f"   async duplex  conn.request_async(), all in flight: {ok} in {dt * 1e3:6.1f} ms "
              f"({n / dt:9,.0f} req/s), one connection, replies matched by id")
        cli.close()
        t.join()
        srv.close()

    import asyncio

    from . import aio

    async def aio_modes() -> tuple[int, float]:
        # the same message handler as the threaded server's: each request
        # is answered with its correlation id
        async with await aio.serve(("127.0.0.1", 0), bytes.upper, framing=framing) as srv:
            async with await aio.connect(srv.address, framing=framing, timeout=5.0) as c:
                t0 = time.perf_counter()
                replies = await asyncio.gather(
                    *(c.request(b"aio %d" % i, timeout=5.0) for i in range(n)))
                dt = time.perf_counter() - t0
                return sum(r == b"AIO %d" % i for i, r in enumerate(replies)), dt

    ok, dt = asyncio.run(aio_modes())
    print(f"   async duplex  pysockkit.aio, asyncio.gather:       {ok} in {dt * 1e3:6.1f} ms "
          f"({n / dt:9,.0f} req/s), same wire format")

    with simplex.Server(("127.0.0.1", 0), ("127.0.0.1", 0), lambda m: m.upper()) as ss:
        with simplex.Client(ss.request_address, ss.reply_address) as sc:
            t0 = time.perf_counter()
            futs = [sc.request_async(b"simplex %d" % i, timeout=5.0) for i in range(n)]
            ok = sum(f.result() == b"SIMPLEX %d" % i for i, f in enumerate(futs))
            dt = time.perf_counter() - t0
            print(f"   async simplex requests on one link, replies on another: {ok} in "
                  f"{dt * 1e3:6.1f} ms ({n / dt:9,.0f} req/s)")


STEPS.append(step_modes)


def step_packets() -> None:
    """The handshake and the close, segment by segment, beside both ends'
    states: sk.lab.conversation records them in a private network
    namespace (no privileges), in textbook notation (x, y: the two ISNs)."""
    from . import lab

    _say("9. See the packets: the handshake and the close, segment by segment (sk.lab.conversation)")
    for name in ("handshake", "close"):
        t0 = time.perf_counter()
        try:
            rec = lab.conversation(name)
        except lab.LabUnavailable as exc:
            print(f"   not here: {exc.strerror or exc}")
            return
        print()
        for line in rec.ladder("symbolic", width=96).splitlines():
            print("   " + line)
        print(f"   (recorded in {_ms(t0)}, helper start-up included)")
    print("   each SYN and each FIN takes one sequence number: that is why ack = seq + 1;")
    print("   python -m pysockkit lab NAME plays the others (lost-last-ack, keepalive, ...)")


STEPS.append(step_packets)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
