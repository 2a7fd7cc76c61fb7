"""Asynchronous duplex over threads: the C receive worker, request_async,
correlated replies, messages to a callback or a bounded queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import concurrent.futures
from collections.abc import Callable, Iterator

import pytest

import pysockkit as sk
from helpers import child_env, kernel_queues, scaled, start_thread, wait_until

F = sk.Framing(correlation=True)
REPLY = 1 << 63
T = scaled(5.0)  # bound for a step that should be quick
LONG = scaled(10.0)  # bound for a few thousand requests


@pytest.fixture
def pair() -> Iterator[tuple[sk.Connection, sk.Connection]]:
    with sk.listen(("127.0.0.1", 0), framing=F) as srv:
        cli = sk.connect(srv.address, timeout=T, framing=F)
        peer = srv.accept(timeout=T)
        try:
            yield cli, peer
        finally:
            cli.close()
            peer.close()


def _echo_server(peer: sk.Connection, delay: float = 0.0, reverse: bool = False) -> threading.Thread:
    """Answer every request with its payload upper-cased; optionally in
    reverse order per batch (replies out of order)."""

    def run() -> None:
        try:
            while True:
                batch = peer.recv_many(timeout=LONG)
                if reverse:
                    batch.reverse()
                if not delay:  # replies in one batch: (id, payload) tuples
                    peer.send_many([(rid | REPLY, msg.upper()) for rid, msg in batch])
                    continue
                for rid, msg in batch:
                    time.sleep(delay)
                    peer.send(msg.upper(), id=rid | REPLY)
        except sk.ConnectionClosed:  # the test closed the pair
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_many_requests_in_flight_out_of_order(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    _echo_server(peer, reverse=True)
    futs = [cli.request_async(b"req %d" % i, timeout=LONG) for i in range(2000)]
    assert [f.result(timeout=LONG) for f in futs] == [b"REQ %d" % i for i in range(2000)]
    assert cli.duplex is not None
    assert cli.duplex.stats["replies"] == 2000
    assert cli.duplex.pending == 0


def test_sends_from_many_threads_while_worker_receives(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    _echo_server(peer)
    d = cli.start_receiver()
    results: dict[int, list[bytes]] = {}

    def client(k: int) -> None:
        futs = [d.request_async(b"t%d-%d" % (k, i), timeout=LONG) for i in range(300)]
        results[k] = [f.result(timeout=LONG) for f in futs]

    ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(2 * LONG)
    for k in range(4):
        assert results[k] == [b"T%d-%d" % (k, i) for i in range(300)]


def test_worker_owns_the_receive_side(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    cli.start_receiver()
    with pytest.raises(RuntimeError, match="receive worker"):
        cli.recv(timeout=0.1)
    with pytest.raises(RuntimeError):
        cli.start_receiver()


def test_unknown_duplicate_and_late_replies_are_counted(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    d = cli.start_receiver()
    fut = d.request_async(b"slow", timeout=0.1)
    rid, _ = peer.recv(timeout=T)
    with pytest.raises(sk.Timeout):
        fut.result(timeout=T)
    peer.send(b"too late", id=rid | REPLY)          # after its timeout
    peer.send(b"who?", id=987654 | REPLY)            # never asked
    fut2 = d.request_async(b"fast", timeout=T)
    rid2, _ = peer.recv(timeout=T)
    peer.send(b"answer", id=rid2 | REPLY)
    peer.send(b"answer again", id=rid2 | REPLY)      # duplicate
    assert fut2.result(timeout=T) == b"answer"
    assert wait_until(lambda: d.stats["unknown"] >= 2, timeout=T)
    assert d.stats["late"] == 1
    assert d.stats["unknown"] == 2  # the stranger and the duplicate
    assert d.stats["replies"] == 1


def test_messages_go_to_callback_or_queue(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    got: list[object] = []
    ev = threading.Event()

    def on_message(m: object) -> None:
        got.append(m)
        if len(got) == 3:
            ev.set()

    cli.start_receiver(on_message=on_message)
    peer.send(b"plain")
    peer.send(b"a request", id=42)
    peer.send(b"another")
    assert ev.wait(T)
    assert got == [b"plain", (42, b"a request"), b"another"]

    cli2, peer2 = pair[1], pair[0]  # the other direction uses the queue
    d2 = cli2.start_receiver()
    assert peer2.duplex is not None
    assert d2.stats["unknown"] == 0
    peer2.duplex.reply(7, b"reply to 7")   # unknown id on cli2's side: counted
    peer2.send(b"hello")
    assert d2.get(timeout=T) == b"hello"
    # the worker handled the reply before the message behind it: counted, dropped
    assert d2.stats["unknown"] == 1
    assert (d2.stats["replies"], d2.stats["late"]) == (0, 0)
    with pytest.raises(sk.Timeout):
        d2.get(timeout=0.05)


def test_bounded_queue_pushes_back(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """Nobody takes the messages: the queue holds exactly maxsize, the
    worker stops reading, the kernel's buffers fill and the sender times
    out.  Drained, every message arrives exactly once, in order."""
    cli, peer = pair
    d = cli.start_receiver(maxsize=10)
    sent: list[bytes] = []
    msg = b""
    with pytest.raises(sk.Timeout) as ei:
        for i in range(100_000):  # bounded: stops when TCP pushes back
            msg = b"%08d" % i + b"x" * 992
            peer.send(msg, timeout=0.5)
            sent.append(msg)
    if ei.value.sent:  # begun when it timed out: its tail goes out with the flush
        sent.append(msg)
    assert 10 < len(sent) < 100_000
    # the bound holds: the queue is full, not over, and the rest waits in
    # the kernel (unread by the blocked worker)
    assert wait_until(lambda: d._queue.qsize() == 10, timeout=T)
    assert d._queue.qsize() == 10
    assert kernel_queues(cli.fileno())[0] > 0
    flusher = start_thread(peer.flush, LONG)
    got = [d.get(timeout=T) for _ in sent]
    flusher.join_result()
    assert got == sent
    with pytest.raises(sk.Timeout):
        d.get(timeout=0.05)  # nothing twice
    assert d.stats["messages"] == len(sent)


def test_close_fails_pending_requests(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    futs = [cli.request_async(b"never answered", timeout=None) for _ in range(5)]
    peer.recv(timeout=T)
    peer.close()
    for f in futs:
        with pytest.raises(sk.ConnectionClosed):
            f.result(timeout=T)
    with pytest.raises(sk.ConnectionClosed):
        cli.request_async(b"after")


def test_plain_framing_requests_are_matched_in_order() -> None:
    """Without correlation ids, request_async matches replies in order
    (more in tests/test_request.py)."""
    with sk.listen(("127.0.0.1", 0)) as srv, sk.connect(srv.address) as cli:
        with srv.accept(timeout=5) as peer:
            futs = [cli.request_async(b"x%d" % i, timeout=5) for i in range(3)]
            peer.send_many([peer.recv(timeout=5).upper() for _ in range(3)])
            assert [f.result(timeout=5) for f in futs] == [b"X0", b"X1", b"X2"]


PEER = r"""
import sys, pysockkit as sk
F = sk.Framing(correlation=True)
conn = sk.connect(("127.0.0.1", int(sys.argv[1])), framing=F)
print("ready", flush=True)
try:
    while True:
        for rid, msg in conn.recv_many():
            conn.send(msg[::-1], id=rid | (1 << 63))
except sk.ConnectionClosed:
    pass
"""


def test_duplex_across_processes_and_peer_kill() -> None:
    with sk.listen(("127.0.0.1", 0), framing=F) as srv:
        p = subprocess.Popen([sys.executable, "-c", PEER, str(srv.address[1])],
                             stdout=subprocess.PIPE, text=True, env=child_env())
        try:
            with srv.accept(timeout=LONG) as conn:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
                futs = [conn.request_async(b"abc%d" % i, timeout=LONG) for i in range(500)]
                assert [f.result(timeout=LONG) for f in futs] == [(b"abc%d" % i)[::-1] for i in range(500)]
                os.kill(p.pid, signal.SIGSTOP)
                pending = [conn.request_async(b"frozen", timeout=None) for _ in range(3)]
                os.kill(p.pid, signal.SIGKILL)
                for f in pending:
                    with pytest.raises(sk.ConnectionClosed):
                        f.result(timeout=LONG)
        finally:
            p.kill()
            p.communicate()


# ------------------------------------------------------------------ docs

def _section_blocks(heading: str) -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "modes.md").read_text()
    start = text.index("\n" + heading + "\n") + 1
    nxt = re.compile(r"^## ", re.M).search(text, start + len(heading))
    section = text[start:nxt.start() if nxt else len(text)]
    return re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)


@pytest.mark.parametrize("heading", [
    "## Synchronous: `conn.request()`",
    "## Asynchronous duplex over threads: `conn.request_async()`",
])
def test_modes_doc_examples_run(heading: str) -> None:
    blocks = _section_blocks(heading)
    assert blocks
    for code in blocks:
        proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                              text=True, timeout=scaled(60), env=child_env())
        assert proc.returncode == 0, proc.stderr


_EXIT_WITH_WORKERS = r"""
import atexit, os, sys, time, threading

def tasks():
    return len(os.listdir("/proc/self/task"))

def after_pysockkit_hook():
    # registered before pysockkit's own hook, so it runs after it: every
    # worker thread must be gone by now (the OS thread count is back)
    end = time.monotonic() + 2 * float(os.environ.get("PYSOCKKIT_TIME_SCALE") or 1)
    while tasks() > base and time.monotonic() < end:
        time.sleep(0.005)
    print("left over threads", tasks() - base, flush=True)

atexit.register(after_pysockkit_hook)
import pysockkit as sk
base = tasks()
f = sk.Framing(correlation=True)
lst = sk.listen(("127.0.0.1", 0), framing=f)
peers = []
def accept():
    for _ in range(4):
        peers.append(lst.accept(timeout=10))
threading.Thread(target=accept, daemon=True).start()
conns = [sk.connect(lst.address, framing=f, timeout=10) for _ in range(4)]
futs = [c.request_async(b"never answered") for c in conns]
print("workers", sum(c._worker_running for c in conns), flush=True)
# no close(): the interpreter exits with four workers blocked in recv
"""


def test_interpreter_exit_stops_and_waits_for_receive_workers() -> None:
    # the atexit hook stops every worker and waits for it, so no C thread
    # takes the GIL while the interpreter finalises
    for _ in range(3):
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", _EXIT_WITH_WORKERS],
                           capture_output=True, text=True, timeout=scaled(60), env=child_env())
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:2] == ["workers 4", "left over threads 0"], r.stdout
        assert "Fatal" not in r.stderr and "ERROR" not in r.stderr, r.stderr
        assert took < scaled(30), f"exit took {took:.1f} s"


def test_stop_workers_then_no_worker_starts() -> None:
    code = r"""
import pysockkit as sk
from pysockkit import _core
f = sk.Framing(correlation=True)
lst = sk.listen(("127.0.0.1", 0), framing=f)
c = sk.connect(lst.address, framing=f, timeout=10)
p = lst.accept(timeout=10)
fut = c.request_async(b"x")
assert c._worker_running
print("left", _core.stop_workers(5.0))
print("running", c._worker_running)
d = sk.connect(lst.address, framing=f, timeout=10)
try:
    d.request_async(b"y")
except RuntimeError as e:
    print("refused:", "shutting down" in str(e))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=scaled(60), env=child_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["left 0", "running False", "refused: True"], r.stdout


# ------------------------------------------- write-behind and C futures

def _small_buffers(cli: sk.Connection, peer: sk.Connection) -> None:
    """Fixed, small socket buffers (no autotuning), so that a full socket
    stays full while the peer does not read."""
    import socket

    for conn, opt in ((cli, socket.SO_SNDBUF), (peer, socket.SO_RCVBUF)):
        s = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 16384)
        finally:
            s.close()


def test_worker_writes_queued_requests_nobody_waits_for(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """request_async only queues the frame: the receive worker writes the
    queue, without anyone calling result() or flush()."""
    cli, peer = pair
    d = cli.start_receiver()
    futs = [d.request_async(b"q%d" % i) for i in range(50)]
    got: list[tuple[int, bytes]] = []
    while len(got) < 50:
        got += peer.recv_many(timeout=T)
    assert [m for _, m in got] == [b"q%d" % i for i in range(50)]
    assert [rid for rid, _ in got] == sorted(rid for rid, _ in got)
    assert wait_until(lambda: cli.unsent == 0)  # the worker's bookkeeping follows
    peer.send_many([(rid | REPLY, m) for rid, m in got])
    assert [f.result(timeout=T) for f in futs] == [b"q%d" % i for i in range(50)]


def test_write_behind_keeps_order_with_send(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """Queued requests and frames sent with conn.send() reach the peer in
    the order of the calls."""
    cli, peer = pair
    d = cli.start_receiver()
    want = []
    for i in range(300):
        if i % 3 == 0:
            cli.send(b"plain %d" % i, timeout=T)
            want.append(b"plain %d" % i)
        else:
            d.request_async(b"req %d" % i)
            want.append(b"req %d" % i)
    got: list[object] = []
    while len(got) < len(want):
        got += peer.recv_many(timeout=T)
    assert [m[1] if isinstance(m, tuple) else m for m in got] == want


def test_request_async_backpressure_bounds_the_queue(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """A peer that does not read: requests fill the socket buffers, then at
    most 256 KiB of queue; the next request_async waits for room up to its
    timeout and raises sk.Timeout without sending anything.  Once the peer
    reads, the worker writes the rest of the queue: every accepted request
    arrives once, in order."""
    cli, peer = pair
    d = cli.start_receiver()
    payload = b"p" * 1000
    accepted: list[bytes] = []
    most = 0
    t0 = 0.0
    with pytest.raises(sk.Timeout):
        for i in range(100_000):  # bounded: the queue bound stops it first
            data = payload + b"%08d" % i
            t0 = time.monotonic()
            d.request_async(data, timeout=0.5)
            accepted.append(data)
            most = max(most, cli.unsent)
    assert time.monotonic() - t0 >= 0.4  # it waited for room
    assert len(accepted) < 100_000
    assert 0 < most <= 256 * 1024 + 1100
    got: list[bytes] = []
    while len(got) < len(accepted):
        got += [m for _, m in peer.recv_many(timeout=T)]
    assert got == accepted
    with pytest.raises(sk.Timeout):
        peer.recv(timeout=0.2)  # the refused request was not sent
    assert cli.unsent == 0


def test_result_waits_while_the_request_is_still_queued(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """result() on a request whose bytes are still queued (the socket is
    full) does not hang: the worker writes the queue as soon as the socket
    takes it, and the reply settles the future."""
    cli, peer = pair
    _small_buffers(cli, peer)
    d = cli.start_receiver()
    with pytest.raises(sk.Timeout):
        for _ in range(10_000):  # fill every socket buffer on the way
            cli.send(b"f" * 60_000, timeout=0.2)
    fut = d.request_async(b"stuck", timeout=LONG)
    time.sleep(0.1)
    assert cli.unsent > 0  # still queued: the socket takes nothing

    def answer() -> None:
        time.sleep(0.3)  # result() waits before a byte of the request left
        try:
            while True:
                for m in peer.recv_many(timeout=T):
                    if isinstance(m, tuple):
                        peer.send(m[1].upper(), id=m[0] | REPLY)
        except sk.ConnectionClosed:  # the test closed the pair
            pass

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    assert fut.result(timeout=LONG) == b"STUCK"
    assert cli.unsent == 0


def test_result_waits_while_the_worker_runs_a_callback(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """While the worker runs Python code (an on_message callback that
    blocks), a request is written by request_async itself."""
    cli, peer = pair
    release = threading.Event()
    entered = threading.Event()

    def on_message(m: object) -> None:
        entered.set()
        release.wait(LONG)

    d = cli.start_receiver(on_message=on_message)
    peer.send(b"hold the worker")
    assert entered.wait(T)
    fut = d.request_async(b"meanwhile", timeout=LONG)
    rid, msg = peer.recv(timeout=T)  # sent though the worker is busy
    assert msg == b"meanwhile"
    peer.send(b"answer", id=rid | REPLY)
    release.set()
    assert fut.result(timeout=LONG) == b"answer"


def test_done_callbacks_run_in_the_worker_or_at_once(
    pair: tuple[sk.Connection, sk.Connection], caplog: pytest.LogCaptureFixture
) -> None:
    cli, peer = pair
    d = cli.start_receiver()
    seen: list[object] = []
    ev = threading.Event()

    def cb(f: "concurrent.futures.Future[bytes]") -> None:
        seen.append((threading.current_thread() is threading.main_thread(), f.result()))
        ev.set()

    fut = d.request_async(b"cb", timeout=T)
    fut.add_done_callback(cb)
    rid, msg = peer.recv(timeout=T)
    peer.send(msg.upper(), id=rid | REPLY)
    assert ev.wait(T)
    assert seen == [(False, b"CB")]  # called in the worker thread
    fut.add_done_callback(lambda f: seen.append("at once"))
    assert seen[-1] == "at once"  # settled already: called here, now

    # a raising callback is logged as concurrent.futures does; the next runs
    after = threading.Event()
    fut2 = d.request_async(b"boom", timeout=0.1)
    fut2.add_done_callback(lambda f: 1 / 0)
    fut2.add_done_callback(lambda f: after.set())
    assert after.wait(T)  # the timeout settled it
    assert isinstance(fut2.exception(), sk.Timeout)
    assert any("exception calling callback" in r.getMessage() for r in caplog.records)


def test_close_fails_pending_c_futures_and_wakes_waiters(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    d = cli.start_receiver()
    futs = [d.request_async(b"never %d" % i) for i in range(100)]
    assert peer.recv(timeout=T)[1] == b"never 0"
    cbs: list[object] = []
    futs[0].add_done_callback(lambda f: cbs.append(type(f.exception())))
    errors: list[object] = []

    def wait(f: "concurrent.futures.Future[bytes]") -> None:
        try:
            f.result(timeout=LONG)
        except BaseException as e:  # noqa: BLE001 - recorded for the assert
            errors.append(type(e))

    ts = [threading.Thread(target=wait, args=(futs[i],)) for i in (1, 50, 99)]
    for t in ts:
        t.start()
    time.sleep(0.05)
    cli.close()
    for t in ts:
        t.join(LONG)
    assert errors == [sk.ConnectionClosed] * 3
    for f in futs:
        with pytest.raises(sk.ConnectionClosed):
            f.result(timeout=T)
    assert wait_until(lambda: not cli._worker_running)
    assert cbs == [sk.ConnectionClosed]
    assert d.pending == 0
    with pytest.raises(sk.ConnectionClosed):
        d.request_async(b"after")


def test_close_after_stop_fails_pending_c_futures(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """With the worker stopped, close() itself fails what is pending."""
    cli, peer = pair
    d = cli.start_receiver()
    fut = d.request_async(b"pending")
    d.stop()
    assert wait_until(lambda: not cli._worker_running)
    assert not fut.done()
    fut2 = d.request_async(b"direct")  # no worker: sent at once
    got: list[bytes] = []
    while len(got) < 2:
        got += [m for _, m in peer.recv_many(timeout=T)]
    assert got == [b"pending", b"direct"]  # the stopping worker wrote the queue
    cli.close()
    for f in (fut, fut2):
        with pytest.raises(sk.ConnectionClosed):
            f.result(timeout=T)


def test_request_timeout_wakes_the_waiter_on_time(pair: tuple[sk.Connection, sk.Connection]) -> None:
    cli, peer = pair
    d = cli.start_receiver()
    t0 = time.monotonic()
    fut = d.request_async(b"slow", timeout=0.2)
    with pytest.raises(sk.Timeout):
        fut.result()  # no limit here: the request's own timeout ends it
    assert 0.19 <= time.monotonic() - t0 < scaled(2.0)
    assert d.stats["timeouts"] == 1


def test_futures_are_concurrent_futures(pair: tuple[sk.Connection, sk.Connection]) -> None:
    """isinstance, concurrent.futures.wait/as_completed and
    asyncio.wrap_future take the C futures."""
    import asyncio
    import concurrent.futures as cf

    cli, peer = pair
    _echo_server(peer, delay=0.002)
    d = cli.start_receiver()
    futs = [d.request_async(b"w%d" % i, timeout=LONG) for i in range(30)]
    assert all(isinstance(f, cf.Future) for f in futs)
    first = cf.wait(futs, timeout=LONG, return_when=cf.FIRST_COMPLETED)
    assert first.done
    done, not_done = cf.wait(futs, timeout=LONG)
    assert not not_done and done == set(futs)
    more = [d.request_async(b"a%d" % i, timeout=LONG) for i in range(30)]
    assert sorted(f.result() for f in cf.as_completed(more, timeout=LONG)) == sorted(
        b"A%d" % i for i in range(30))

    async def main() -> bytes:
        return await asyncio.wrap_future(d.request_async(b"aio", timeout=T))

    assert asyncio.run(main()) == b"AIO"


def test_cancel_set_result_and_plain_futures(pair: tuple[sk.Connection, sk.Connection]) -> None:
    import concurrent.futures as cf

    from pysockkit._duplex import Future

    cli, peer = pair
    d = cli.start_receiver()
    fut = d.request_async(b"c", timeout=T)
    called: list[object] = []
    fut.add_done_callback(called.append)
    assert fut.cancel() and fut.cancelled() and fut.done() and not fut.running()
    assert fut.cancel()  # again: still True
    assert called == [fut]
    with pytest.raises(cf.CancelledError):
        fut.result()
    rid, _ = peer.recv(timeout=T)  # the request was sent all the same
    peer.send(b"dropped", id=rid | REPLY)
    assert wait_until(lambda: d.stats["replies"] == 1)
    assert fut.cancelled() and d.pending == 0

    fut2 = d.request_async(b"s", timeout=T)
    fut2.set_result(b"mine")
    assert fut2.result() == b"mine"
    with pytest.raises(cf.InvalidStateError):
        fut2.set_result(b"again")
    assert not fut2.cancel()
    rid, _ = peer.recv(timeout=T)
    peer.send(b"theirs", id=rid | REPLY)
    assert wait_until(lambda: d.stats["replies"] == 2)
    assert fut2.result() == b"mine"  # the real reply does not replace it

    plain = Future()  # usable like any concurrent.futures.Future
    plain.set_exception(ValueError("x"))
    assert isinstance(plain.exception(), ValueError)
    with pytest.raises(ValueError):
        plain.result()
    with pytest.raises(cf.TimeoutError):
        Future().result(timeout=0.01)
