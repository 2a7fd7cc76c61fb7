"""pysockkit.aio: asyncio connections over real loopback sockets.

Each test runs its own event loop (asyncio.run, bounded by wait_for), so no
pytest-asyncio is needed.  Peers are aio connections, synchronous
pysockkit connections (in a thread or a separate process: tests/hb_peer.py)
and raw stdlib sockets.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import pytest

import pysockkit as sk
import pysockkit.aio as aio
from helpers import child_env, scaled

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
PEER = str(Path(__file__).with_name("hb_peer.py"))
F = sk.Framing(correlation=True)
REPLY = 1 << 63
# aio beats come from the event loop, which shares the GIL with the test's
# threads: the timeout is 6 intervals (more under PYSOCKKIT_TIME_SCALE), so
# a loaded machine that delays a few beats cannot trip it falsely
INTERVAL, TIMEOUT = 0.1, scaled(0.6)
HB = sk.Heartbeat(INTERVAL, TIMEOUT)
DETECT_BOUND = (INTERVAL + TIMEOUT) * 1.1 + scaled(0.1)  # + scheduling slack
LOCAL = ("127.0.0.1", 0)


def run(coro: Coroutine[Any, Any, T], timeout: float = scaled(20.0)) -> T:
    """Run one test coroutine in a fresh event loop, bounded in time."""

    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def echo(conn: aio.Connection) -> None:
    """serve() handler: answers requests upper-cased, echoes plain frames."""
    async for msg in conn:
        if isinstance(msg, tuple):
            await conn.reply(msg[0], msg[1].upper())
        else:
            await conn.send(msg)


async def pair(framing: Optional[sk.Framing] = None, heartbeat: Optional[sk.Heartbeat] = None,
               **kw: Any) -> tuple[aio.Connection, aio.Connection]:
    """(client, server-side) aio connections."""
    async with await aio.listen(LOCAL, framing=framing, heartbeat=heartbeat, **kw) as lst:
        cli = await aio.connect(lst.address, framing=framing, heartbeat=heartbeat, timeout=5, **kw)
        srv = await lst.accept(timeout=5)
    return cli, srv


async def close_all(*conns: aio.Connection) -> None:
    for c in conns:
        c.close()
    for c in conns:
        await asyncio.wait_for(c.wait_closed(), 10)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Peer:
    """A tests/hb_peer.py process (synchronous API, heartbeats on)."""

    def __init__(self, role: str, addr: tuple[str, int], *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, PEER, role, addr[0], str(addr[1]), str(INTERVAL), str(TIMEOUT),
             "--max-seconds", str(scaled(15)), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def results(self, timeout: float = scaled(15.0)) -> dict[str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.communicate(timeout=scaled(10))


# ------------------------------------------------------------------ basics


def test_send_recv_iterate_and_batches() -> None:
    async def main() -> None:
        cli, srv = await pair()
        await cli.send(b"hello")
        await cli.send(bytearray(b"bytearray"))
        await cli.send(memoryview(b"xxmemoryview")[2:])
        await cli.send(b"")
        cli.send_nowait(b"nowait")
        await cli.send_many([b"a", b"b", b"c"])
        assert await srv.recv(timeout=2) == b"hello"
        assert await srv.recv(timeout=2) == b"bytearray"
        assert await srv.recv(timeout=2) == b"memoryview"
        assert await srv.recv(timeout=2) == b""
        got: list[aio.Message] = []
        while len(got) < 4:
            got += await srv.recv_many(timeout=2)
        assert got == [b"nowait", b"a", b"b", b"c"]
        assert srv.recv_nowait() is None
        await srv.send(b"back")
        assert await cli.recv(timeout=2) == b"back"
        cli.shutdown("write")
        assert [m async for m in srv] == []  # ends at the orderly EOF
        with pytest.raises(sk.ConnectionClosed):  # sticky
            await srv.recv(timeout=1)
        assert srv.local_address == cli.remote_address
        assert srv.state == sk.TcpState.CLOSE_WAIT
        assert srv.info().state == sk.TcpState.CLOSE_WAIT
        assert "pysockkit.aio.Connection" in repr(cli)
        await close_all(cli, srv)
        assert cli.closed and srv.state == sk.TcpState.CLOSED
        with pytest.raises(sk.ConnectionClosed):
            await cli.send(b"after close")

    run(main())


def test_many_frames_in_order_with_large_ones() -> None:
    async def main() -> None:
        cli, srv = await pair()
        payloads = [os.urandom(random.Random(i).choice([0, 1, 7, 64, 5000, 70000, 1 << 20]))
                    for i in range(300)]

        async def sender() -> None:
            for p in payloads:
                await cli.send(p)
            cli.shutdown("write")

        task = asyncio.create_task(sender())
        got = [m async for m in srv]
        await task
        assert got == payloads
        await close_all(cli, srv)

    run(main())


def test_serve_handler_and_server_lifecycle() -> None:
    async def main() -> None:
        async with await aio.serve(LOCAL, on_connection=echo) as server:
            conns = [await aio.connect(server.address, timeout=5) for _ in range(5)]
            for i, c in enumerate(conns):
                await c.send(b"hi %d" % i)
            assert [await c.recv(timeout=2) for c in conns] == [b"hi %d" % i for i in range(5)]
            assert len(server.connections) == 5
            assert "clients=5" in repr(server)
            await close_all(*conns)
        # the server closed: nothing listens anymore
        with pytest.raises(sk.Error) as ei:
            await aio.connect(server.address, timeout=5)
        assert ei.value.errno == errno.ECONNREFUSED
        assert server.errors == []

    run(main())


def test_server_close_ends_handlers_and_records_errors() -> None:
    async def main() -> None:
        async def bad(conn: aio.Connection) -> None:
            msg = await conn.recv()
            if msg == b"boom":
                raise ValueError("handler failed")
            await asyncio.sleep(60)  # cancelled by close()

        server = await aio.serve(LOCAL, on_connection=bad)
        c1 = await aio.connect(server.address, timeout=5)
        c2 = await aio.connect(server.address, timeout=5)
        await c1.send(b"boom")
        with pytest.raises(sk.ConnectionClosed):  # the server closed c1's connection
            await c1.recv(timeout=5)
        await c2.send(b"wait")
        await asyncio.sleep(0.05)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        with pytest.raises(sk.ConnectionClosed):
            await c2.recv(timeout=5)
        assert [type(e) for e in server.errors] == [ValueError]
        await close_all(c1, c2)

    run(main())


def test_listener_accept_timeout_iteration_and_close() -> None:
    async def main() -> None:
        lst = await aio.listen(LOCAL, backlog=16)
        with pytest.raises(sk.Timeout):
            await lst.accept(timeout=0.05)
        # a cancelled accept leaves the client in the backlog
        task = asyncio.create_task(lst.accept())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        c1 = await aio.connect(lst.address, timeout=5)
        c2 = await aio.connect(lst.address, timeout=5)
        accepted = []
        async for conn in lst:
            accepted.append(conn)
            if len(accepted) == 2:
                break
        # close() wakes a waiting accept with ConnectionClosed, iteration stops
        waiting = asyncio.create_task(lst.accept())
        await asyncio.sleep(0.01)
        lst.close()
        with pytest.raises(sk.ConnectionClosed):
            await waiting
        assert [c async for c in lst] == []
        assert lst.closed and "closed" in repr(lst)
        await lst.wait_closed()
        await close_all(c1, c2, *accepted)

    run(main())


def test_connect_refused_is_a_typed_error() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(sk.Error) as ei:
            await aio.connect(("127.0.0.1", port), timeout=5)
        assert ei.value.errno == errno.ECONNREFUSED

    run(main())


# ----------------------------------------------------- timeouts, cancelling


def test_recv_timeout_and_cancel_lose_nothing() -> None:
    async def main() -> None:
        cli, srv = await pair()
        with pytest.raises(sk.Timeout):
            await srv.recv(timeout=0.05)
        with pytest.raises(TimeoutError):  # sk.Timeout is a TimeoutError
            await srv.recv(timeout=0)
        task = asyncio.create_task(srv.recv())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await cli.send(b"first")
        assert await srv.recv(timeout=2) == b"first"

        await close_all(cli, srv)

        # a synchronous sender thread streams numbered frames in bursts with
        # pauses; the reader uses tiny timeouts and cancellations (wait_for)
        # that race the arrivals: every frame arrives, in order, once
        n = 4000
        with sk.listen(LOCAL) as sl:
            conn = await aio.connect(sl.address, timeout=5)
            peer = await in_thread(sl.accept, 5.0)

        def sender() -> None:
            rnd = random.Random(5)
            i = 0
            while i < n:
                k = min(n - i, rnd.choice([1, 1, 2, 5, 50]))
                peer.send_many([b"%d" % j for j in range(i, i + k)], timeout=5)
                i += k
                time.sleep(rnd.choice([0, 0, 0.0001, 0.0003, 0.001]))

        with peer:
            t = threading.Thread(target=sender)
            t.start()
            got: list[aio.Message] = []
            rnd = random.Random(7)
            timeouts = 0
            while len(got) < n:
                wait = rnd.choice([0, 0.00005, 0.0001, 0.0003])
                try:
                    if rnd.random() < 0.5:
                        got.append(await asyncio.wait_for(conn.recv(), wait))
                    else:
                        got.append(await conn.recv(timeout=wait))
                except (asyncio.TimeoutError, sk.Timeout):
                    timeouts += 1
            await in_thread(t.join, 10.0)
            assert got == [b"%d" % i for i in range(n)]
            assert timeouts > 100
            await close_all(conn)

    run(main())


def test_recv_timeout_inside_a_frame_keeps_the_partial_frame() -> None:
    async def main() -> None:
        async with await aio.listen(LOCAL) as lst:
            raw = socket.create_connection(lst.address)
            conn = await lst.accept(timeout=5)
        with raw:
            raw.sendall(b"\x00\x00\x00\x0aabcde")
            with pytest.raises(sk.Timeout):
                await conn.recv(timeout=0.1)
            raw.sendall(b"fghij\x00\x00")
            assert await conn.recv(timeout=2) == b"abcdefghij"
            raw.sendall(b"\x00\x01z")
            assert await conn.recv(timeout=2) == b"z"
        await close_all(conn)

    run(main())


# ------------------------------------------------------------ end of stream


@pytest.mark.parametrize("tail,exc", [
    (b"", sk.ConnectionClosed),
    (b"\x00\x00", sk.IncompleteFrame),
    (b"\x00\x00\x00\x09abc", sk.IncompleteFrame),
    (b"\x7f\xff\xff\xff", sk.FrameTooLarge),
])
def test_end_of_stream_errors_after_the_frames(tail: bytes, exc: type[sk.Error]) -> None:
    async def main() -> None:
        async with await aio.listen(LOCAL) as lst:
            raw = socket.create_connection(lst.address)
            conn = await lst.accept(timeout=5)
        with raw:
            raw.sendall(b"\x00\x00\x00\x02ok" + tail)
            raw.shutdown(socket.SHUT_WR)
            assert await conn.recv(timeout=2) == b"ok"
            with pytest.raises(exc) as ei:
                await conn.recv(timeout=2)
            if exc is sk.IncompleteFrame:
                assert ei.value.missing > 0  # type: ignore[attr-defined]
            if exc is sk.FrameTooLarge:
                assert ei.value.size == 0x7FFFFFFF  # type: ignore[attr-defined]
            with pytest.raises(exc):  # sticky
                await conn.recv(timeout=2)
        await close_all(conn)

    run(main())


def test_close_wakes_pending_calls() -> None:
    async def main() -> None:
        cli, srv = await pair(framing=F)
        r = asyncio.create_task(cli.recv())
        q = asyncio.create_task(cli.request(b"never answered"))
        await asyncio.sleep(0.05)
        cli.close()
        for t in (r, q):
            with pytest.raises(sk.ConnectionClosed):
                await t
        # and the peer closing fails requests still waiting on our side
        req = asyncio.create_task(srv.request(b"x"))
        await asyncio.sleep(0.05)
        with pytest.raises(sk.ConnectionClosed):
            await req
        await close_all(cli, srv)

    run(main())


# ----------------------------------------------------------- backpressure


def test_peer_that_never_reads_blocks_sender_with_bounded_memory() -> None:
    async def main() -> None:
        limit = 256 * 1024
        with socket.socket() as ls:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            conn = await aio.connect(ls.getsockname(), timeout=5, send_limit=limit)
            raw, _ = ls.accept()
        chunk = b"x" * 65536
        sent = 0
        with raw:
            with pytest.raises(sk.Timeout):
                for _ in range(2000):  # bounded: 128 MiB at most
                    await conn.send(chunk, timeout=0.3)
                    sent += 1
            # blocked after the kernel buffers and our limit filled up
            assert sent < 200
            assert conn.write_buffer_size <= limit + 2 * len(chunk) + 8
            # send_nowait refuses past the hard limit instead of growing
            with pytest.raises(sk.Error) as ei:
                for _ in range(2000):
                    conn.send_nowait(chunk)
            assert ei.value.errno == errno.ENOBUFS
            assert conn.write_buffer_size <= 17 * 2**20 + len(chunk)
            with pytest.raises(sk.Timeout):
                await conn.drain(timeout=0.1)
            conn.abort()
            await conn.wait_closed()

    run(main())


def test_blocked_sender_resumes_and_delivers_everything() -> None:
    async def main() -> None:
        cli, srv = await pair(send_limit=64 * 1024, recv_limit=64 * 1024)
        n, size = 400, 50_000
        payloads = [bytes([i % 256]) * size for i in range(n)]

        async def sender() -> None:
            for p in payloads:
                await cli.send(p)
            cli.shutdown("write")

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.3)  # the receiver sleeps: the sender must block
        assert not task.done()
        assert cli.write_buffer_size <= 64 * 1024 + 2 * size
        assert srv.stats["read_pauses"] >= 1
        got = [m async for m in srv]
        await task
        assert got == payloads
        await close_all(cli, srv)

    run(main())


def test_receive_queue_is_bounded_and_pauses_the_peer() -> None:
    """A synchronous sender floods an aio receiver that does not read: the
    receiver stops reading at recv_limit, the sender's send times out, and
    once the receiver reads, every frame arrives."""
    limit = 128 * 1024

    async def main() -> None:
        with sk.listen(LOCAL) as sl:
            conn = await aio.connect(sl.address, timeout=5, recv_limit=limit)
            peer = await in_thread(sl.accept, 5.0)
        chunk = b"y" * 4096
        sent = [0]
        blocked = threading.Event()

        def flood() -> None:
            while True:
                try:
                    peer.send(chunk, timeout=0.3)
                    sent[0] += 1
                except sk.Timeout as exc:
                    if getattr(exc, "sent", 0):
                        sent[0] += 1
                    blocked.set()
                    break

        with peer:
            t = threading.Thread(target=flood)
            t.start()
            await in_thread(t.join, 15.0)
            assert blocked.is_set()
            assert conn.stats["read_pauses"] >= 1
            assert conn.queued_bytes <= limit + 256 * 1024 + 4096
            assert conn.stats["queued"] * 4100 <= limit + 256 * 1024 + 4096
            total = 0

            def finish() -> None:
                peer.flush(timeout=10)
                peer.shutdown("write")

            ft = threading.Thread(target=finish)
            ft.start()
            async for m in conn:
                assert m == chunk
                total += 1
            await in_thread(ft.join, 10.0)
            assert total == sent[0]
        await close_all(conn)

    run(main())


# ------------------------------------------------------ correlated requests


def test_1000_concurrent_requests_answered_out_of_order() -> None:
    async def main() -> None:
        async def shuffled(conn: aio.Connection) -> None:
            rnd = random.Random(1)
            while True:
                batch = await conn.recv_many()
                rnd.shuffle(batch)
                for rid, data in batch:  # type: ignore[misc]
                    conn.reply_nowait(rid, data.upper())
                await conn.drain()

        async with await aio.serve(LOCAL, on_connection=shuffled, framing=F) as server:
            async with await aio.connect(server.address, framing=F, timeout=5) as conn:
                replies = await asyncio.gather(*(conn.request(b"req %d" % i, timeout=10)
                                                 for i in range(1000)))
                assert replies == [b"REQ %d" % i for i in range(1000)]
                futs = [conn.request_nowait(b"n%d" % i, timeout=10) for i in range(1000)]
                assert await asyncio.gather(*futs) == [b"N%d" % i for i in range(1000)]
                st = conn.stats
                assert st["replies"] == st["requests"] == 2000
                assert st["pending"] == 0 and st["unknown"] == st["late"] == 0

    run(main())


def test_unknown_duplicate_and_late_replies_are_dropped_and_counted() -> None:
    async def main() -> None:
        cli, srv = await pair(framing=F)

        async def server() -> None:
            async for rid, data in srv:  # type: ignore[misc]
                if data == b"dup":
                    await srv.reply(rid, b"dup-1")
                    await srv.reply(rid, b"dup-2")
                elif data == b"unknown":
                    await srv.reply(rid + 10**9, b"stray")
                    await srv.reply(rid, b"known")
                elif data.startswith(b"slow"):
                    await asyncio.sleep(0.3)
                    await srv.reply(rid, b"late " + data)
                else:
                    await srv.reply(rid, data)

        task = asyncio.create_task(server())
        assert await cli.request(b"dup", timeout=2) == b"dup-1"
        assert await cli.request(b"unknown", timeout=2) == b"known"
        with pytest.raises(sk.Timeout):
            await cli.request(b"slow-timeout", timeout=0.1)
        slow = asyncio.create_task(cli.request(b"slow-cancel"))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        fut = cli.request_nowait(b"slow-future")
        fut.cancel()
        # the late replies arrive while these wait: never misdelivered
        for i in range(5):
            assert await cli.request(b"ok %d" % i, timeout=2) == b"ok %d" % i
        await asyncio.sleep(0.7)
        st = cli.stats
        assert st["duplicate"] == 1
        assert st["unknown"] == 1
        assert st["late"] == 3
        assert st["timeouts"] == 1
        assert st["pending"] == 0
        # plain frames still flow beside requests
        await srv.send(b"plain")
        assert await cli.recv(timeout=2) == b"plain"
        task.cancel()
        await close_all(cli, srv)

    run(main())


def test_resolve_replies_with_a_book_lets_the_book_decide() -> None:
    """With the correlation book (aio's path), each reply is settled in the
    book first: only a delivered one reaches its future; a duplicate, a
    late and a stray reply are dropped and counted by the book, never left
    in ``rest``; the timeout entry of a delivered request is removed, not
    called; an error reply fails its future with sk.RemoteError."""
    from pysockkit import _core

    async def main() -> None:
        loop = asyncio.get_running_loop()
        book = _core.CorrelationBook()
        a, b, c = book.register(), book.register(), book.register()
        futs: dict[int, asyncio.Future[bytes]] = {i: loop.create_future() for i in (a, b, c)}
        fa, fb = futs[a], futs[b]
        assert book.forget(c)  # its caller gave up: the reply will be late
        del futs[c]
        timeouts = {b: 2.5}
        frames: list[Any] = [b"plain", (7, b"request"), (b | REPLY, b"bee"), (b | REPLY, b"again"),
                             (99 | REPLY, b"stray"), (c | REPLY, b"late"),
                             (a | REPLY | _core.ID_ERROR, b"boom"), b"tail"]
        rest, resolved, late = _core.resolve_replies(frames, futs, timeouts, book)
        assert rest == [b"plain", (7, b"request"), b"tail"]
        assert (resolved, late) == (2, 0) and futs == {} and timeouts == {}
        assert fb.result() == b"bee"
        with pytest.raises(sk.RemoteError, match="boom"):
            fa.result()
        assert book.pending == 0
        assert book.stats == {"replies": 2, "remote_errors": 1, "timeouts": 0,
                              "late": 1, "duplicate": 1, "unknown": 1}
        with pytest.raises(TypeError, match="CorrelationBook"):
            _core.resolve_replies([], {}, {}, object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="in-order"):
            _core.resolve_replies([], {}, {}, _core.CorrelationBook(in_order=True))

    run(main())


def test_resolve_replies_hands_each_reply_to_its_future() -> None:
    """_core.resolve_replies, the C loop behind request(): pending futures
    are resolved in frame order and their timers cancelled; a future its
    caller already cancelled counts as late; every other frame (plain,
    requests, replies nobody waits for) is left for the caller, in order."""
    from pysockkit import _core

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs: dict[int, asyncio.Future[bytes]] = {i: loop.create_future() for i in (1, 2, 3, 4)}
        order: list[int] = []
        for i in (1, 2, 4):
            futs[i].add_done_callback(lambda _f, i=i: order.append(i))
        cancelled = futs[3]
        cancelled.cancel()
        timer = loop.call_later(60, lambda: None)
        timers = {2: timer}
        frames: list[Any] = [b"plain", (5, b"request"), (2 | REPLY, b"two"), (9 | REPLY, b"stray"),
                             (1 | REPLY, b"one"), (3 | REPLY, b"too late"), b"tail"]
        f1, f2 = futs[1], futs[2]
        rest, resolved, late = _core.resolve_replies(frames, futs, timers)
        assert rest == [b"plain", (5, b"request"), (9 | REPLY, b"stray"), b"tail"]
        assert (resolved, late) == (2, 1)
        assert list(futs) == [4] and timers == {} and timer.cancelled()
        assert f1.result() == b"one" and f2.result() == b"two" and cancelled.cancelled()
        await asyncio.sleep(0)
        assert order == [2, 1]  # callbacks scheduled in the order of the frames
        # nothing to do: the same answer, nothing touched
        assert _core.resolve_replies([b"a", (7, b"b")], futs, {}) == ([b"a", (7, b"b")], 0, 0)
        assert _core.resolve_replies([], {}, {}) == ([], 0, 0)

        class Broken:
            def set_result(self, value: bytes) -> None:
                raise ValueError("broken future")

            def done(self) -> bool:
                return False

        with pytest.raises(ValueError, match="broken future"):
            _core.resolve_replies([(1 | REPLY, b"x")], {1: Broken()}, {})
        with pytest.raises(TypeError):
            _core.resolve_replies((), {}, {})  # type: ignore[arg-type]
        futs[4].cancel()

    run(main())


def test_corked_frames_go_out_early_in_growing_writes() -> None:
    """Frames queued without yielding are written once 4 KiB are corked
    (so the peer starts on them while more are queued: the pipelining of
    request/reply traffic), then each time twice as much is corked; the
    rest goes out when the loop iteration ends, and the next iteration
    starts again at 4 KiB."""
    async def main() -> None:
        with socket.socket() as ls:
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            conn = await aio.connect(ls.getsockname(), timeout=5)
            raw, _ = ls.accept()
        with raw:
            raw.setblocking(False)
            frame = struct.pack(">I", 60) + b"x" * 60  # 64 bytes on the wire

            def take() -> bytes:
                data = b""
                while True:
                    try:
                        data += raw.recv(1 << 20)
                    except BlockingIOError:
                        return data

            for _ in range(100):  # 6400 bytes, no await in between
                conn.send_nowait(b"x" * 60)
            assert take() == frame * 64  # the first 4 KiB are in our kernel already
            assert conn.write_buffer_size == 36 * 64
            await asyncio.sleep(0)  # the iteration ends: the rest is written
            assert conn.write_buffer_size == 0
            assert take() == frame * 36
            for _ in range(400):  # 25600 bytes: early writes of 4 KiB and 8 KiB
                conn.send_nowait(b"x" * 60)
            assert take() == frame * (64 + 128)
            assert conn.write_buffer_size == 208 * 64
            await asyncio.sleep(0)
            assert take() == frame * 208
        conn.abort()
        await conn.wait_closed()

    run(main())


def test_answers_of_woken_tasks_leave_in_the_same_loop_iteration() -> None:
    """A read that wakes tasks (a frame for a recv, a reply for a request)
    schedules the flush behind them: whatever they queue is written before
    the loop polls again.  Seen from the selector: no poll ever finds
    frames corked."""
    seen: list[int] = []
    conns: list[aio.Connection] = []

    class Spy(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: Optional[float] = None) -> Any:
            seen.extend(c.write_buffer_size for c in conns)
            return super().select(timeout)

    async def main() -> None:
        cli, srv = await pair(framing=F)
        conns.extend((cli, srv))

        async def server() -> None:
            async for msg in srv:
                if isinstance(msg, tuple):
                    srv.reply_nowait(msg[0], msg[1])
                else:
                    srv.send_nowait(msg)

        task = asyncio.create_task(server())
        srv.send_nowait(b"start")
        assert await cli.recv(timeout=5) == b"start"
        seen.clear()  # from here on, every step of this task follows a read
        for i in range(20):
            assert await cli.request(b"r%d" % i, timeout=5) == b"r%d" % i
            cli.send_nowait(b"p%d" % i)  # queued by a task woken by a reply
            assert await cli.recv(timeout=5) == b"p%d" % i
        assert len(seen) > 40 and not any(seen), seen
        task.cancel()
        await close_all(cli, srv)

    loop = asyncio.SelectorEventLoop(Spy())
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()


# ------------------------------------------------ plain requests, in order


def test_plain_requests_pipeline_in_order_against_sk_serve() -> None:
    """request() on plain framing: 500 in flight from gather, against the
    threaded sk.serve with a plain echo handler; every reply in order."""
    payloads = [b"%d" % i * (i % 7 + 1) for i in range(500)]

    async def main() -> None:
        with sk.serve(LOCAL, handler=lambda m: m) as server:
            conn = await aio.connect(server.address, timeout=5)
            replies = await asyncio.gather(*(conn.request(x, timeout=10) for x in payloads))
            assert replies == payloads
            futs = [conn.request_nowait(x, timeout=10) for x in payloads]
            assert await asyncio.gather(*futs) == payloads
            st = conn.stats
            assert st["replies"] == st["requests"] == 1000
            assert st["pending"] == st["owed"] == st["late"] == 0
            await close_all(conn)

    run(main())


def test_plain_requests_pipeline_in_order_against_aio_server() -> None:
    """The same against an aio server with a per-connection handler that
    echoes each frame (the message-handler form is tested below)."""
    payloads = [b"%d" % i * (i % 7 + 1) for i in range(500)]

    async def plain_echo(conn: aio.Connection) -> None:
        async for msg in conn:
            await conn.send(msg)

    async def main() -> None:
        async with await aio.serve(LOCAL, on_connection=plain_echo) as server:
            async with await aio.connect(server.address, timeout=5) as conn:
                replies = await asyncio.gather(*(conn.request(x, timeout=10)
                                                 for x in payloads))
                assert replies == payloads

    run(main())


def test_500_gathered_requests_against_a_default_message_handler_server() -> None:
    """Issue 11: `conn = await aio.connect(addr)` + gather of 500 requests
    against a default `aio.serve(addr, handler)` returns every reply, in
    order (plain framing: replies matched first in, first out)."""
    payloads = [b"req %d " % i + b"x" * (i % 13) for i in range(500)]

    async def handler(payload: bytes) -> bytes:
        return payload[::-1]

    async def main() -> None:
        async with await aio.serve(LOCAL, handler) as server:
            conn = await aio.connect(server.address)
            try:
                replies = await asyncio.gather(*(conn.request(x) for x in payloads))
            finally:
                await close_all(conn)
        assert replies == [p[::-1] for p in payloads]
        assert server.served == 500 and server.errors == []

    run(main())


def test_plain_late_and_cancelled_replies_go_to_nobody() -> None:
    """A plain request that timed out or was cancelled still owes its
    reply: dropped when it comes, never given to a later request; frames
    that arrive while nothing is owed go to recv()."""
    async def main() -> None:
        cli, srv = await pair()
        with pytest.raises(sk.Timeout):
            await cli.request(b"t", timeout=0.05)
        cancelled = asyncio.ensure_future(cli.request(b"c"))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        later = asyncio.ensure_future(cli.request(b"q", timeout=10))
        assert [await srv.recv(timeout=5) for _ in range(3)] == [b"t", b"c", b"q"]
        assert cli.stats["owed"] == 2 and cli.stats["pending"] == 1
        await srv.send_many([b"late t", b"late c", b"answer q", b"unsolicited"])
        assert await later == b"answer q"
        assert await cli.recv(timeout=5) == b"unsolicited"
        st = cli.stats
        assert st["late"] == 2 and st["owed"] == 0 and st["timeouts"] == 1
        await close_all(cli, srv)

    run(main())


def test_resolve_in_order_hands_replies_by_position() -> None:
    """_core.resolve_in_order, the C loop behind plain request(): frames[k]
    answers request first + k; a request no longer pending has its reply
    dropped (late); the frames after `count` are returned."""
    from pysockkit import _core

    async def main() -> None:
        loop = asyncio.get_running_loop()
        futs = {i: loop.create_future() for i in (5, 7)}
        done = loop.create_future()
        done.cancel()
        futs[8] = done
        timer = loop.call_later(100, lambda: None)
        rest, resolved, late = _core.resolve_in_order(
            [b"r5", b"r6", b"r7", b"r8", b"m1", b"m2"], futs, {5: timer}, 5, 4)
        assert rest == [b"m1", b"m2"] and (resolved, late) == (2, 2)
        assert timer.cancelled() and futs == {}
        with pytest.raises(TypeError):
            _core.resolve_in_order([], {}, {}, "5", 1)

    run(main())


# --------------------------------------------------- half-close and abort


def test_half_close_peer_still_answers() -> None:
    async def main() -> None:
        cli, srv = await pair()
        for i in range(3):
            await cli.send(b"part %d" % i)
        cli.shutdown("write")
        with pytest.raises(sk.ConnectionClosed):
            await cli.send(b"too late")
        got = [m async for m in srv]
        assert got == [b"part 0", b"part 1", b"part 2"]
        await srv.send(b"got %d" % len(got))
        srv.close()
        assert await cli.recv(timeout=2) == b"got 3"
        with pytest.raises(sk.ConnectionClosed):
            await cli.recv(timeout=2)
        await close_all(cli, srv)

    run(main())


def test_abort_resets_aio_and_sync_peers() -> None:
    async def main() -> None:
        cli, srv = await pair()
        await cli.send(b"before")
        assert await srv.recv(timeout=2) == b"before"
        cli.abort()
        await cli.wait_closed()
        with pytest.raises(sk.ConnectionReset):
            await srv.recv(timeout=2)
        with pytest.raises(sk.ConnectionReset):
            await srv.send(b"x")
        await close_all(srv)

        with sk.listen(LOCAL) as sl:
            conn = await aio.connect(sl.address, timeout=5)
            peer = await in_thread(sl.accept, 5.0)
        with peer:
            await conn.send(b"last words")
            await conn.drain()
            await asyncio.sleep(0.05)
            conn.abort()
            await conn.wait_closed()
            assert await in_thread(peer.recv, 2.0) == b"last words"
            with pytest.raises(sk.ConnectionReset):
                await in_thread(peer.recv, 2.0)

    run(main())


# ------------------------------------------------------------ heartbeats


def test_heartbeats_between_aio_peers_idle_connection_lives() -> None:
    async def main() -> None:
        t_start = time.monotonic()
        cli, srv = await pair(heartbeat=HB)
        with pytest.raises(sk.Timeout):
            await srv.recv(timeout=3 * TIMEOUT)  # only beats flow: none surfaces
        for c in (cli, srv):
            st = c.heartbeat_stats
            assert not st["peer_dead"]
            assert st["pings_received"] + st["pongs_received"] >= 3
            # a round trip measured on this connection is shorter than its
            # life so far; the figure itself is printed, not asserted
            assert c.latency is not None and 0 < c.latency < time.monotonic() - t_start
            print(f"aio heartbeat latency {c.latency * 1e6:.0f} us")
        assert cli.heartbeat is HB
        await cli.send(b"alive")
        assert await srv.recv(timeout=2) == b"alive"
        await close_all(cli, srv)

    run(main())


def test_heartbeats_interoperate_with_sync_peer_in_process() -> None:
    """aio client <-> synchronous server (C hub) and sync client <-> aio
    listener: idle for many timeouts, both sides measure latency, nobody
    is declared dead."""

    async def main() -> None:
        with sk.listen(LOCAL, heartbeat=HB) as sl:
            conn = await aio.connect(sl.address, heartbeat=HB, timeout=5)
            peer = await in_thread(sl.accept, 5.0)
        async with await aio.listen(LOCAL, heartbeat=HB) as lst:
            sync_cli = await in_thread(lambda: sk.connect(lst.address, timeout=5, heartbeat=HB))
            aconn = await lst.accept(timeout=5)
        with peer, sync_cli:
            await asyncio.sleep(3 * TIMEOUT)
            for s in (peer, sync_cli):
                assert not s.heartbeat_stats["peer_dead"]
                assert s.latency is not None
            for a in (conn, aconn):
                assert not a.heartbeat_stats["peer_dead"]
                assert a.latency is not None
                assert a.heartbeat_stats["pings_received"] + a.heartbeat_stats["pongs_received"] > 0
            await conn.send(b"to sync")
            assert await in_thread(peer.recv, 2.0) == b"to sync"
            await in_thread(sync_cli.send, b"to aio")
            assert await aconn.recv(timeout=2) == b"to aio"
            await close_all(conn, aconn)

    run(main())


DETECT_WAIT = DETECT_BOUND + scaled(5)  # longer than the bound: a miss fails the bound


def _detect(conn: aio.Connection, pending: str) -> Awaitable[Any]:
    if pending == "recv":
        return conn.recv(timeout=DETECT_WAIT)
    if pending == "request":
        return conn.request(b"are you there", timeout=DETECT_WAIT)
    return conn.send(b"z" * 1_000_000, timeout=DETECT_WAIT)


@pytest.mark.parametrize("pending", ["recv", "request", "none"])
def test_sigstopped_sync_server_is_declared_dead(pending: str) -> None:
    """An aio client and a synchronous server process (hb_peer.py server)
    that gets frozen: PeerDead within interval + timeout."""
    framing = F if pending == "request" else None

    async def main() -> None:
        peer = Peer("server", ("127.0.0.1", 0))
        try:
            line = peer.line()
            assert line.startswith("port "), line
            conn = await aio.connect(("127.0.0.1", int(line.split()[1])), heartbeat=HB,
                                     framing=framing, timeout=5)
            assert await in_thread(peer.line) == "ready"  # the loop keeps beating
            await asyncio.sleep(2 * INTERVAL)
            t0 = time.monotonic()
            peer.proc.send_signal(signal.SIGSTOP)
            if pending == "none":
                while not conn.heartbeat_stats["peer_dead"] and time.monotonic() - t0 < DETECT_WAIT:
                    await asyncio.sleep(0.005)
            else:
                with pytest.raises(sk.PeerDead):
                    await _detect(conn, pending)
            detected = time.monotonic() - t0
            print(f"{pending}: SIGSTOP detected after {detected:.3f} s (TIMEOUT {TIMEOUT} s)")
            assert detected < DETECT_BOUND, f"detected after {detected:.3f} s"
            with pytest.raises(sk.PeerDead):  # and so does every next call
                await conn.recv(timeout=1)
            with pytest.raises(sk.PeerDead):
                await conn.send(b"x")
            await conn.wait_closed()
        finally:
            peer.stop()

    run(main())


def test_sigstopped_sync_client_is_declared_dead_by_aio_listener() -> None:
    async def main() -> None:
        async with await aio.listen(LOCAL, heartbeat=HB) as lst:
            peer = Peer("echo", lst.address)
            try:
                conn = await lst.accept(timeout=10)
                assert await in_thread(peer.line) == "ready"
                await conn.send(b"echo me")
                assert await conn.recv(timeout=2) == b"echo me"
                await asyncio.sleep(3 * INTERVAL)  # idle: the beats keep it alive
                assert not conn.heartbeat_stats["peer_dead"]
                t0 = time.monotonic()
                peer.proc.send_signal(signal.SIGSTOP)
                with pytest.raises(sk.PeerDead):
                    await conn.recv(timeout=DETECT_WAIT)
                assert time.monotonic() - t0 < DETECT_BOUND
                await conn.wait_closed()
            finally:
                peer.stop()

    run(main())


def test_sync_peer_sees_idle_aio_client_alive() -> None:
    """The aio side's PINGs keep a synchronous server (separate process)
    from declaring it dead while the aio application is idle."""

    async def main() -> None:
        peer = Peer("server", ("127.0.0.1", 0))
        try:
            port = int(peer.line().split()[1])
            conn = await aio.connect(("127.0.0.1", port), heartbeat=HB, timeout=5)
            assert await in_thread(peer.line) == "ready"
            await asyncio.sleep(4 * TIMEOUT)
            await conn.send(b"still here")
            await conn.drain()
            res = await in_thread(peer.results)
            assert res["result"] == "frame", (res, conn.heartbeat_stats)
            assert conn.heartbeat_stats["pings_sent"] > 0
            await close_all(conn)
        finally:
            peer.stop()

    run(main())


def test_slow_reader_is_not_declared_dead() -> None:
    """Our application not reading (reading paused, bytes in our kernel) is
    not a dead peer."""

    async def main() -> None:
        cli, srv = await pair(heartbeat=HB, recv_limit=32 * 1024)

        async def flood() -> None:
            for _ in range(400):
                await srv.send(b"f" * 8192)

        task = asyncio.create_task(flood())
        await asyncio.sleep(3 * TIMEOUT)  # the client reads nothing
        assert not cli.heartbeat_stats["peer_dead"]
        assert not srv.heartbeat_stats["peer_dead"]
        n = 0
        while n < 400:
            n += len(await cli.recv_many(timeout=2))
        await task
        await close_all(cli, srv)

    run(main())


def test_close_with_heartbeats_lingers_until_the_slow_peer_has_everything() -> None:
    """close() right after sending to a heartbeating peer that is not
    reading yet: the peer's PINGs must not meet a closed socket (RST would
    discard our unacknowledged data), so the close lingers."""
    import hashlib

    async def main() -> None:
        async with await aio.listen(LOCAL, heartbeat=HB) as lst:
            peer = Peer("noread", lst.address, "--noread-seconds", "1.0")
            try:
                conn = await lst.accept(timeout=10)
                assert await in_thread(peer.line) == "ready"
                chunk = os.urandom(65536)
                digest = hashlib.sha256()
                n = 0
                with pytest.raises(sk.Timeout):
                    for _ in range(256):  # until the peer's window is full
                        await conn.send(chunk, timeout=0.3)
                        digest.update(chunk)
                        n += 1
                digest.update(chunk)  # the frame queued when send timed out
                n += 1
                conn.close()
                await asyncio.wait_for(conn.wait_closed(), 10)
                res = await in_thread(peer.results)
                assert int(res["frames"]) == n
                assert res["sha256"] == digest.hexdigest()
            finally:
                peer.stop()

    run(main())


# ---------------------------------------------------------------- interop


def _sync_correlated_echo(peer: sk.Connection) -> threading.Thread:
    def serve() -> None:
        try:
            while True:
                batch = peer.recv_many(timeout=10)
                peer.send_many([(rid | REPLY, m.upper()) for rid, m in batch])
        except sk.ConnectionClosed:  # the test closed the connection
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_aio_client_sync_server_plain_and_correlated() -> None:
    async def main() -> None:
        with sk.listen(LOCAL, framing=F) as sl:
            conn = await aio.connect(sl.address, framing=F, timeout=5)
            peer = await in_thread(sl.accept, 5.0)
        with peer:
            # plain frames both ways
            await conn.send(b"plain")
            assert await in_thread(peer.recv, 2.0) == b"plain"
            await in_thread(peer.send, b"from sync")
            assert await conn.recv(timeout=2) == b"from sync"
            t = _sync_correlated_echo(peer)
            replies = await asyncio.gather(*(conn.request(b"r%d" % i, timeout=10)
                                             for i in range(1000)))
            assert replies == [b"R%d" % i for i in range(1000)]
            await close_all(conn)
            await in_thread(t.join, 10.0)

    run(main())


def test_sync_client_aio_server_plain_and_correlated() -> None:
    async def main() -> None:
        async with await aio.serve(LOCAL, on_connection=echo, framing=F) as server:
            def client() -> list[bytes]:
                with sk.connect(server.address, timeout=5, framing=F) as c:
                    c.send(b"plain")
                    assert c.recv(timeout=5) == b"plain"
                    futs = [c.request_async(b"q%d" % i, timeout=10) for i in range(500)]
                    return [f.result(timeout=10) for f in futs]

            assert await in_thread(client) == [b"Q%d" % i for i in range(500)]

    run(main())


# ------------------------------------------------------------ other loops


def test_on_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async with await aio.serve(LOCAL, on_connection=echo, framing=F, heartbeat=HB) as server:
            async with await aio.connect(server.address, framing=F, heartbeat=HB,
                                         timeout=5) as conn:
                await conn.send(b"on uvloop")
                assert await conn.recv(timeout=2) == b"on uvloop"
                got = await asyncio.gather(*(conn.request(b"u%d" % i, timeout=5)
                                             for i in range(200)))
                assert got == [b"U%d" % i for i in range(200)]
                await asyncio.sleep(3 * TIMEOUT)
                assert conn.latency is not None
        cli, srv = await pair()
        cli.abort()
        with pytest.raises(sk.ConnectionReset):
            await srv.recv(timeout=2)
        await close_all(cli, srv)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()


def test_example_aio_echo_runs() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "aio_echo.py")],
                          capture_output=True, text=True, timeout=30, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert "echo: b'HELLO'" in proc.stdout
    assert "requests: 100 replies" in proc.stdout


# ------------------------------------------ keepalive= and serve_forever()


def keepalive_of(fd: int) -> tuple[int, int, int, int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT,
    TCP_USER_TIMEOUT in ms) of socket fd, read with the stdlib."""
    s = socket.socket(fileno=fd)
    try:
        return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    finally:
        s.detach()


def test_keepalive_reaches_the_kernel_on_connect_listen_and_serve() -> None:
    async def main() -> None:
        ka_c = sk.Keepalive(idle=11, interval=3, count=4, user_timeout=2.5)
        ka_l = sk.Keepalive(idle=12, interval=5, count=6, user_timeout=7)
        ka_s = sk.Keepalive(idle=13, interval=2, count=9)
        async with await aio.listen(LOCAL, keepalive=ka_l) as lst:
            cli = await aio.connect(lst.address, keepalive=ka_c, timeout=5)
            acc = await lst.accept(timeout=5)
            assert keepalive_of(cli.fileno()) == (1, 11, 3, 4, 2500)
            assert keepalive_of(acc.fileno()) == (1, 12, 5, 6, 7000)
            await close_all(cli, acc)

        seen: list[tuple[int, ...]] = []

        async def handler(conn: aio.Connection) -> None:
            seen.append(keepalive_of(conn.fileno()))
            await conn.send(await conn.recv())

        async with await aio.serve(LOCAL, on_connection=handler, keepalive=ka_s) as srv:
            c = await aio.connect(srv.address, timeout=5)
            await c.send(b"x")
            assert await c.recv(timeout=5) == b"x"
            # no keepalive asked: the client's socket keeps the defaults
            assert keepalive_of(c.fileno())[0] == 0
            await close_all(c)
        assert seen == [(1, 13, 2, 9, 0)]

    run(main())


def test_serve_forever_returns_when_closed_from_another_task() -> None:
    async def main() -> None:
        srv = await aio.serve(LOCAL, on_connection=echo)
        forever = asyncio.ensure_future(srv.serve_forever())
        c = await aio.connect(srv.address, timeout=5)
        await c.send(b"while serving")
        assert await c.recv(timeout=5) == b"while serving"
        assert not forever.done()

        async def closer() -> None:
            srv.close()

        await asyncio.ensure_future(closer())
        assert await asyncio.wait_for(forever, 5) is None
        await asyncio.wait_for(srv.wait_closed(), 5)
        with pytest.raises(sk.ConnectionClosed):  # the handler was ended, its connection closed
            await c.recv(timeout=5)
        with pytest.raises(sk.Error) as ei:  # and nothing listens any more
            await aio.connect(srv.address, timeout=5)
        assert ei.value.errno == errno.ECONNREFUSED
        assert srv.errors == [] and srv.exits.stopped == 1 and srv.exits.total == 1
        await close_all(c)

    run(main())


def test_cancelling_serve_forever_closes_the_server() -> None:
    async def main() -> None:
        srv = await aio.serve(LOCAL, on_connection=echo)
        forever = asyncio.ensure_future(srv.serve_forever())
        c = await aio.connect(srv.address, timeout=5)
        await c.send(b"hi")
        assert await c.recv(timeout=5) == b"hi"
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        await asyncio.wait_for(srv.wait_closed(), 5)
        assert srv.connections == frozenset()
        with pytest.raises(sk.ConnectionClosed):
            await c.recv(timeout=5)
        with pytest.raises(sk.Error) as ei:
            await aio.connect(srv.address, timeout=5)
        assert ei.value.errno == errno.ECONNREFUSED
        await close_all(c)

    run(main())
