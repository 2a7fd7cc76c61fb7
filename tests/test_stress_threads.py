"""Thread-safety stress (issue 7): several threads sending, receiving,
closing and reading ``info()`` on the same connections at once.

Every frame carries (sender, sequence, length) and a payload derived from
them, so a receiver can tell a torn or interleaved frame, a duplicate, or
a frame from one sender out of order.  Expectations:

* no crash (the sanitizer build of tests/run_hardening.sh runs this file
  too, so a use-after-free or a data race on a buffer shows up there);
* no interleaved, torn, duplicated or reordered frame, ever;
* with no close, every frame a sender was told was taken arrives;
* once a close has begun, every operation ends with a typed error
  (``sk.ConnectionClosed``/``sk.Timeout``/``OSError``), never hangs;
* observers (``info()``, ``state``, ``buffered``, ``repr``...) never crash:
  before the close they never fail, after it they raise only
  ``sk.ConnectionClosed`` (``state`` reads CLOSED).

Bounded: a fixed number of rounds, every blocking call has a timeout,
every thread is joined with a timeout.
"""

from __future__ import annotations

import concurrent.futures
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import pytest

import pysockkit as sk
from helpers import scaled, wait_until

STEP = scaled(10.0)
REPLY = 1 << 63
TAG = struct.Struct(">BII")  # sender, sequence, payload length


def make_frame(sender: int, seq: int, rng: random.Random, limit: int = 1 << 20) -> bytes:
    n = min(rng.choice([0, 1, 17, 300, 4000, 70_000]), limit - TAG.size)
    fill = bytes([(sender * 31 + seq) & 0xFF]) * n
    return TAG.pack(sender, seq, n) + fill


def check_frame(msg: bytes) -> tuple[int, int]:
    """(sender, seq) of an intact frame; AssertionError otherwise."""
    assert len(msg) >= TAG.size, f"short frame {msg[:16]!r}"
    sender, seq, n = TAG.unpack_from(msg)
    assert len(msg) == TAG.size + n, f"frame {sender}/{seq}: {len(msg) - TAG.size} bytes, tag says {n}"
    want = (sender * 31 + seq) & 0xFF
    body = msg[TAG.size :]
    assert body.count(want) == n, f"frame {sender}/{seq}: foreign bytes inside (interleaved or torn)"
    return sender, seq


def pair(framing: Optional[sk.Framing] = None) -> tuple[sk.Connection, sk.Connection]:
    with sk.listen(("127.0.0.1", 0), framing=framing) as lst:
        cli = sk.connect(lst.address, timeout=STEP, framing=framing)
        try:
            srv = lst.accept(timeout=STEP)
        except BaseException:
            cli.close()
            raise
    return cli, srv


class Crew:
    """Threads that record their exceptions; join() re-raises the first
    unexpected one."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()

    def spawn(self, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # handed to the test thread
                self.errors.append(exc)
                self.stop.set()

        t = threading.Thread(target=run, daemon=True)
        self.threads.append(t)
        t.start()

    def join(self, timeout: float = STEP * 2) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self.threads if t.is_alive()]
        assert not alive, f"{len(alive)} threads still running: a call hung"
        if self.errors:
            raise self.errors[0]


EXPECTED = (sk.ConnectionClosed, sk.Timeout)  # ConnectionReset is a ConnectionClosed


# ------------------------------------------------------------ no close


def test_many_senders_one_receiver_every_frame_intact_and_in_order() -> None:
    """6 threads send (send and send_many, random sizes) on one connection
    while a receiver drains it and 2 observers read info()/state: every
    frame arrives, intact, each sender's frames in order."""
    cli, srv = pair()
    crew = Crew()
    senders, per_sender = 6, 300
    taken = [0] * senders
    received: dict[int, list[int]] = {s: [] for s in range(senders)}
    try:

        def send(sid: int) -> None:
            rng = random.Random(sid)
            seq = 0
            while seq < per_sender:
                if rng.random() < 0.3:
                    batch = [make_frame(sid, seq + k, rng) for k in range(min(5, per_sender - seq))]
                    assert cli.send_many(batch, timeout=STEP) == len(batch)
                    seq += len(batch)
                else:
                    cli.send(make_frame(sid, seq, rng), timeout=STEP)
                    seq += 1
                taken[sid] = seq

        def receive() -> None:
            total = senders * per_sender
            got = 0
            rng = random.Random(99)
            while got < total:
                msgs = srv.recv_many(timeout=STEP) if rng.random() < 0.5 else [srv.recv(timeout=STEP)]
                for m in msgs:
                    s, q = check_frame(m)
                    received[s].append(q)
                got += len(msgs)

        def observe(c: sk.Connection) -> None:
            while not crew.stop.is_set():
                assert c.info().state == sk.TcpState.ESTABLISHED
                assert c.state == sk.TcpState.ESTABLISHED
                c.buffered, c.unsent, c.pending_replies, repr(c)

        for sid in range(senders):
            crew.spawn(send, sid)
        crew.spawn(receive)
        crew.spawn(observe, cli)
        crew.spawn(observe, srv)
        recv_thread = crew.threads[senders]
        recv_thread.join(STEP * 3)
        crew.stop.set()
        crew.join()
    finally:
        cli.close()
        srv.close()
    for sid in range(senders):
        assert received[sid] == list(range(per_sender)), f"sender {sid}: out of order or missing"


def test_requests_from_many_threads_stay_paired() -> None:
    """request() from 8 threads at once on one connection (an echo peer):
    each thread gets the reply to its own request."""
    cli, srv = pair()
    crew = Crew()
    try:

        def echo() -> None:
            try:
                while True:
                    srv.send(srv.recv(timeout=STEP))
            except sk.ConnectionClosed:
                pass

        def ask(tid: int) -> None:
            rng = random.Random(tid)
            for i in range(200):
                msg = make_frame(tid, i, rng)
                assert cli.request(msg, timeout=STEP) == msg

        crew.spawn(echo)
        for tid in range(8):
            crew.spawn(ask, tid)
        for t in crew.threads[1:]:
            t.join(STEP * 3)
        cli.shutdown("write")
        crew.join()
    finally:
        cli.close()
        srv.close()


# --------------------------------------------------------------- chaos


SENDERS_PER_SIDE = 3


def _chaos_round(rng: random.Random, framing: Optional[sk.Framing]) -> dict[str, int]:
    """One pair; senders on both sides, receivers on both sides, observers,
    and a closer that closes or aborts one side (or both) at a random
    moment.  Returns counts of what happened; asserts, per sender, that
    its frames arrive as a gap-free prefix of what it was told was taken."""
    cli, srv = pair(framing)
    limit = (framing or sk.Framing()).max_frame
    crew = Crew()
    counts = {"send_calls": 0, "received": 0, "closed_errors": 0, "observer_errors": 0}
    lock = threading.Lock()
    closing = threading.Event()  # set just before the first close
    taken: dict[int, int] = {}  # sender -> frames it was told were taken
    tried: dict[int, int] = {}  # sender -> frames including its last, failed call
    got: dict[int, list[int]] = {}  # sender -> seqs its peer received, in order

    def count(key: str, n: int = 1) -> None:
        with lock:
            counts[key] += n

    def send(side: int, sid: int) -> None:
        c = (cli, srv)[side]
        r = random.Random(rng.random())
        seq = 0
        while not crew.stop.is_set():
            n = 1
            try:
                if r.random() < 0.3:
                    n = 3
                    batch = [make_frame(sid, seq + k, r, limit) for k in range(n)]
                    c.send_many(batch, timeout=r.choice([0, 0.001, 0.05, STEP]))
                else:
                    c.send(make_frame(sid, seq, r, limit), timeout=r.choice([0, 0.001, 0.05, STEP]))
                seq += n
                count("send_calls")
            except sk.Timeout as exc:
                seq += exc.sent  # taken frames keep their numbers
            except EXPECTED:
                assert closing.is_set(), "a send failed before any close"
                taken[sid], tried[sid] = seq, seq + n
                count("closed_errors")
                return
        taken[sid], tried[sid] = seq, seq

    def receive(side: int) -> None:
        c = (cli, srv)[side]
        r = random.Random(rng.random())
        while not crew.stop.is_set():
            try:
                msgs = c.recv_many(timeout=0.05) if r.random() < 0.5 else [c.recv(timeout=0.05)]
            except sk.Timeout:
                continue
            except (*EXPECTED, sk.IncompleteFrame):
                # (IncompleteFrame: the peer's close cut its own frame in
                # flight, the torn tail at EOF reported as such)
                assert closing.is_set(), "a receive failed before any close"
                count("closed_errors")
                return
            for m in msgs:
                s, q = check_frame(m)
                seqs = got.setdefault(s, [])
                # one receiver per side, TCP in order: each sender's frames
                # arrive 0, 1, 2, ... with no gap, no repeat, no reordering
                assert q == len(seqs), f"sender {s}: frame {q} after {seqs[-3:]}"
                seqs.append(q)
            count("received", len(msgs))

    def observe(c: sk.Connection) -> None:
        ops: list[Callable[[], object]] = [
            c.info, lambda: c.state, lambda: c.buffered, lambda: c.unsent,
            lambda: c.closed, lambda: repr(c), lambda: c.local_address]
        while not crew.stop.is_set():
            for op in ops:
                try:
                    op()
                except sk.ConnectionClosed:  # anything else fails the round
                    assert closing.is_set(), "an observer failed before any close"
                    count("observer_errors")
            time.sleep(0)
        # both sides are closed by now: the same answers every time
        assert c.closed and c.state is sk.TcpState.CLOSED
        assert (c.buffered, c.unsent) == (0, 0)
        for op in (c.info, lambda: c.local_address):
            with pytest.raises(sk.ConnectionClosed):
                op()
            count("observer_errors")

    def closer() -> None:
        time.sleep(rng.uniform(0.005, 0.15))
        how = rng.choice(["close-cli", "close-srv", "abort-cli", "abort-srv", "both"])
        closing.set()
        if how == "close-cli":
            cli.close()
        elif how == "close-srv":
            srv.close()
        elif how == "abort-cli":
            cli.abort()
        elif how == "abort-srv":
            srv.abort()
        else:
            cli.close()
            srv.close()
        time.sleep(0.05)
        # the other side too, so that everything ends
        cli.close()
        srv.close()

    try:
        for sid in range(SENDERS_PER_SIDE):
            crew.spawn(send, 0, sid)
            crew.spawn(send, 1, 10 + sid)
        crew.spawn(receive, 0)
        crew.spawn(receive, 1)
        crew.spawn(observe, cli)
        crew.spawn(observe, srv)
        crew.spawn(closer)
        crew.threads[-1].join(STEP)
        # every blocked call must end by itself now that both sides are closed
        deadline = time.monotonic() + STEP
        for t in crew.threads[:-3]:
            t.join(max(0.0, deadline - time.monotonic()))
        hung = [t for t in crew.threads[:-3] if t.is_alive()]
        crew.stop.set()
        crew.join()
        assert not hung, f"{len(hung)} senders/receivers did not end after both sides closed"
    finally:
        cli.close()
        srv.close()
    # every sender and both receivers ended with exactly one typed error
    assert counts["closed_errors"] == 2 * SENDERS_PER_SIDE + 2, counts
    # each observer's final pass saw the two closed-connection errors
    assert counts["observer_errors"] >= 4, counts
    # what arrived of each sender is a prefix of what it handed over: never
    # more than its last call could have put on the wire
    for s, seqs in got.items():
        assert len(seqs) <= tried[s], (s, len(seqs), taken[s], tried[s])
    assert counts["received"] == sum(len(v) for v in got.values())
    return counts


@pytest.mark.parametrize("framing", [None, sk.Framing(header_size=2, byteorder="little")], ids=["h4", "h2le"])
def test_send_receive_observe_close_at_once(framing: Optional[sk.Framing]) -> None:
    rng = random.Random(1234)
    totals = {"send_calls": 0, "received": 0, "closed_errors": 0, "observer_errors": 0}
    rounds = 25
    for _ in range(rounds):
        for k, v in _chaos_round(rng, framing).items():
            totals[k] += v
    print(f"\n{rounds} rounds: {totals}")
    assert totals["closed_errors"] == rounds * (2 * SENDERS_PER_SIDE + 2)
    assert totals["received"] > 0 and totals["send_calls"] > 0


def test_duplex_requests_while_closing() -> None:
    """request_async from 4 threads while the receive worker runs and a
    closer closes the connection: every future ends (result or typed
    error), nothing hangs."""
    f = sk.Framing(correlation=True)
    rng = random.Random(5)
    for _ in range(20):
        cli, srv = pair(f)
        crew = Crew()
        futures: list[Any] = []
        flock = threading.Lock()

        def echo() -> None:
            try:
                while True:
                    rid, msg = srv.recv(timeout=STEP)
                    srv.send(msg, timeout=STEP, id=rid | (1 << 63))
            except (sk.ConnectionClosed, sk.IncompleteFrame):
                pass

        def ask(tid: int) -> None:
            for i in range(200):
                try:
                    fut = cli.request_async(b"%d/%d" % (tid, i), timeout=STEP)
                except EXPECTED:
                    return
                with flock:
                    futures.append((b"%d/%d" % (tid, i), fut))

        try:
            cli.start_receiver()  # see test_first_request_async_from_two_threads
            crew.spawn(echo)
            for tid in range(4):
                crew.spawn(ask, tid)
            time.sleep(rng.uniform(0.001, 0.05))
            cli.close()
            srv.close()
            crew.join()
            done, not_done = concurrent.futures.wait([f for _, f in futures], timeout=5)
            assert not not_done, f"{len(not_done)} of {len(futures)} futures never completed"
            for msg, fut in futures:
                try:
                    assert fut.result(0) == msg
                except EXPECTED:
                    pass
        finally:
            cli.close()
            srv.close()


def test_receive_worker_stops_when_closed() -> None:
    """close() while requests are in flight: the receive worker ends
    (``_worker_running`` false) and every pending future is failed."""
    f = sk.Framing(correlation=True)
    stuck = 0
    for _ in range(60):
        cli, srv = pair(f)
        crew = Crew()
        cli.start_receiver()
        futures: list[Any] = []

        def echo() -> None:
            try:
                while True:
                    rid, msg = srv.recv(timeout=STEP)
                    srv.send(msg, id=rid | (1 << 63))
            except (sk.ConnectionClosed, sk.IncompleteFrame):
                pass

        def ask() -> None:
            while not crew.stop.is_set():
                try:
                    futures.append(cli.request_async(b"x"))  # no timeout
                except EXPECTED:
                    return

        try:
            crew.spawn(echo)
            crew.spawn(ask)
            crew.spawn(ask)
            time.sleep(0.01)
            cli.close()
            srv.close()
            crew.stop.set()
            crew.join()
            if not wait_until(lambda: not cli._worker_running, timeout=scaled(2.0)):
                stuck += 1
                break
            _, not_done = concurrent.futures.wait(futures, timeout=scaled(1.0))
            assert not not_done, f"{len(not_done)} futures left pending by a worker that ended"
        finally:
            cli.close()
            srv.close()
    assert stuck == 0, "the receive worker kept running after close()"


def test_first_request_async_from_two_threads() -> None:
    """The first request_async of a connection starts its receive worker:
    with four threads racing to do it, every request goes out exactly once
    and gets its own reply."""
    f = sk.Framing(correlation=True)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # widen the window
    try:
        _first_requests(f)
    finally:
        sys.setswitchinterval(old)


def _first_requests(f: sk.Framing) -> None:
    for _ in range(50):
        cli, srv = pair(f)
        crew = Crew()
        go = threading.Barrier(4)
        futs: dict[int, Any] = {}

        def ask(k: int) -> None:
            go.wait(STEP)
            futs[k] = cli.request_async(b"first %d" % k, timeout=STEP)

        try:
            for k in range(4):
                crew.spawn(ask, k)
            crew.join()
            assert cli._worker_running
            got: list[tuple[int, bytes]] = []
            while len(got) < 4:
                got += srv.recv_many(timeout=STEP)
            assert sorted(m for _, m in got) == [b"first %d" % k for k in range(4)]
            assert len({rid for rid, _ in got}) == 4
            srv.send_many([(rid | REPLY, m.upper()) for rid, m in got])
            assert [futs[k].result(timeout=STEP) for k in range(4)] == [
                b"FIRST %d" % k for k in range(4)]
            with pytest.raises(sk.Timeout):
                srv.recv(timeout=0.01)  # nothing sent twice
        finally:
            cli.close()
            srv.close()


def test_info_never_reads_a_reused_descriptor() -> None:
    """A thread reads info() while another closes the connection and opens
    a listening socket, which takes the freed descriptor number: info() must
    never describe that foreign socket (it would say LISTEN)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with sk.listen(("127.0.0.1", 0)) as lst:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                cli = sk.connect(lst.address, timeout=STEP)
                srv = lst.accept(timeout=STEP)
                stop = threading.Event()
                states: list[Any] = []
                other: list[BaseException] = []

                def read() -> None:
                    while True:
                        # stop is set after the close: the last round
                        # always reads a closed connection
                        last = stop.is_set()
                        try:
                            states.append(cli.info().state)
                            states.append(cli.state)
                            cli.local_address
                            cli.remote_address
                        except sk.ConnectionClosed:
                            states.append(cli.state)  # CLOSED, never raises
                        except BaseException as exc:  # anything else is a bug
                            other.append(exc)
                            return
                        if last:
                            return

                t = threading.Thread(target=read, daemon=True)
                t.start()
                time.sleep(0.001)
                cli.close()
                foreign = socket.socket()
                foreign.bind(("127.0.0.1", 0))
                foreign.listen()
                time.sleep(0.002)
                stop.set()
                t.join(STEP)
                foreign.close()
                srv.close()
                assert sk.TcpState.LISTEN not in states, "info() of a closed Connection described another socket"
                assert not other, f"after close: {other[0]!r} instead of sk.ConnectionClosed"
                assert states and states[-1] is sk.TcpState.CLOSED
    finally:
        sys.setswitchinterval(old)
