"""Ctrl-C interrupts every blocking call promptly, even with timeout=None.

Each case runs in a child interpreter that prints "ready", then blocks in a
pysockkit call; the test sends SIGINT and measures how long the child takes
to raise KeyboardInterrupt.  The child reports the time.monotonic() at which
it caught the interrupt (CLOCK_MONOTONIC is system-wide on Linux, so the two
clocks compare), which separates the interrupt latency from interpreter
shutdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

import sigint_tail_child as tail
from helpers import (Spawned, child_env, decode_stream, recv_all, recv_exact, scaled,
                     wait_sleeping_in, waiting_call, SOCKET_WAITS)

CHILD = r"""
import signal, socket, sys, time
import pysockkit as sk

# a shell's background job (cmd &) starts with SIGINT ignored, and Python
# then installs no handler: restore the default one, Ctrl-C is what we test
signal.signal(signal.SIGINT, signal.default_int_handler)

case = sys.argv[1]
keep = []

def ready():
    print("ready", flush=True)

try:
    if case in ("recv", "recv_many", "iterate", "request"):
        srv = sk.listen(("127.0.0.1", 0))
        cli = sk.connect(srv.address, timeout=5)
        peer = srv.accept(timeout=5)
        keep += [srv, cli, peer]
        ready()
        if case == "recv":
            peer.recv()
        elif case == "recv_many":
            peer.recv_many()
        elif case == "iterate":
            for _ in peer:
                pass
        else:
            cli.request(b"unanswered")
    elif case == "accept":
        srv = sk.listen(("127.0.0.1", 0))
        keep.append(srv)
        ready()
        while True:  # a stray client (another program on this box) is not the point
            srv.accept().close()
    elif case == "send":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        cli = sk.connect(ls.getsockname(), timeout=5)
        raw, _ = ls.accept()
        keep += [ls, cli, raw]
        ready()
        cli.send(bytes(8 << 20))
    elif case == "future":
        # the result of a request_async whose reply never comes
        f = sk.Framing(correlation=True)
        srv = sk.listen(("127.0.0.1", 0), framing=f)
        cli = sk.connect(srv.address, timeout=5, framing=f)
        peer = srv.accept(timeout=5)
        keep += [srv, cli, peer]
        fut = cli.request_async(b"unanswered")
        ready()
        fut.result()
    elif case == "connect":
        # backlog 0 with one queued, never accepted client: the next SYN is
        # dropped and connect() waits in SYN_SENT (shared/STATES.md)
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        filler = socket.create_connection(ls.getsockname(), timeout=5)
        keep += [ls, filler]
        try:
            sk.connect(ls.getsockname(), timeout=0.2).close()
        except sk.Timeout:
            pass
        else:
            print("unsupported", flush=True)
            sys.exit(3)
        ready()
        sk.connect(ls.getsockname())
    elif case == "resume":
        # interrupted in the middle of a frame: nothing may be lost
        srv = sk.listen(("127.0.0.1", 0))
        raw = socket.create_connection(srv.address, timeout=5)
        conn = srv.accept(timeout=5)
        keep += [srv, raw, conn]
        payload = bytes(range(256)) * 40
        wire = len(payload).to_bytes(4, "big") + payload
        raw.sendall(wire[:5000])
        ready()
        try:
            conn.recv()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            raw.sendall(wire[5000:])
            got = conn.recv(timeout=5)
            print("resumed", "ok" if got == payload else "CORRUPT", flush=True)
            for k in keep[::-1]:
                k.close()
            sys.exit(0)
    elif case == "usr1":
        # a handler that does not raise: the call goes on (PEP 475) and the
        # deadline is not extended by the interruptions
        hits = []

        def on_usr1(*a):
            hits.append(1)
            print("hit", flush=True)

        signal.signal(signal.SIGUSR1, on_usr1)
        srv = sk.listen(("127.0.0.1", 0))
        cli = sk.connect(srv.address, timeout=5)
        peer = srv.accept(timeout=5)
        keep += [srv, cli, peer]
        ready()
        t0 = time.monotonic()
        try:
            peer.recv(timeout=1.0)
        except sk.Timeout:
            print("timeout", len(hits), time.monotonic() - t0, flush=True)
        for k in keep[::-1]:
            k.close()
        sys.exit(0)
    else:
        sys.exit(f"unknown case {case}")
    print("returned", flush=True)
    sys.exit(4)
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), flush=True)
    raise
"""

BLOCKING_CASES = ["recv", "recv_many", "iterate", "request", "accept", "send", "connect",
                  "future"]


class Child(Spawned):
    """The CHILD script with a case, or another script (``script=``) with
    its arguments."""

    def __init__(self, case: str, cwd, *args: str, script: Optional[str] = None) -> None:
        argv = [script, case, *args] if script else ["-c", CHILD, case]
        super().__init__([sys.executable, *argv], env=child_env(), cwd=str(cwd))


@pytest.fixture
def spawn(tmp_path):
    children: list[Child] = []

    def make(case: str, *args: str, script: Optional[str] = None) -> Child:
        c = Child(case, tmp_path, *args, script=script)
        children.append(c)
        return c

    yield make
    for c in children:
        c.stop()


def interrupt(child: Child) -> tuple[float, float, str, str]:
    """Wait for "ready", SIGINT the child; returns (latency to the
    KeyboardInterrupt, time until exit, stdout, stderr)."""
    line = child.readline(timeout=scaled(20.0))
    if line == "unsupported":
        child.finish()
        pytest.skip("this kernel completes a connect to a full accept queue")
    if line != "ready":
        out, err = child.finish()
        pytest.fail(f"child did not get ready: {line!r} {out!r} {err[-2000:]}")
    # the blocking call has started: the child sleeps in poll or a blocking
    # recv (a future: futex)
    wait_sleeping_in(f"/proc/{child.proc.pid}", SOCKET_WAITS + ("futex",))
    assert child.proc.poll() is None, "the child returned instead of blocking"
    t_sig = time.monotonic()
    os.kill(child.proc.pid, signal.SIGINT)
    try:
        child.proc.wait(timeout=scaled(5.0))
    except subprocess.TimeoutExpired:
        pass
    t_exit = time.monotonic()
    out, err = child.finish()
    caught = [ln for ln in out.splitlines() if ln.startswith("interrupted ")]
    assert caught, f"no KeyboardInterrupt in the child: stdout={out!r} stderr={err[-2000:]!r}"
    latency = float(caught[0].split()[1]) - t_sig
    return latency, t_exit - t_sig, out, err


@pytest.mark.parametrize("case", BLOCKING_CASES)
def test_sigint_interrupts_blocking_call(spawn, case, record_property):
    child = spawn(case)
    latency, to_exit, out, err = interrupt(child)
    record_property("sigint_latency_s", round(latency, 4))
    print(f"{case}: SIGINT -> KeyboardInterrupt in {latency * 1000:.1f} ms, exit after {to_exit * 1000:.1f} ms")
    assert "KeyboardInterrupt" in err, err[-2000:]
    assert child.proc.returncode in (-signal.SIGINT, 1, 130), child.proc.returncode
    assert to_exit < scaled(1.0), f"child exited {to_exit:.3f} s after SIGINT"
    # "promptly": the typical figure (a few ms: the signal interrupts poll()
    # with EINTR) is printed above, not asserted; load only stretches it
    assert latency < scaled(0.5), f"KeyboardInterrupt came {latency:.3f} s after SIGINT"


def test_sigint_latency_figures(spawn):
    """Three interrupts of a blocked recv: each prompt; the figures (a few
    ms on a quiet machine) are printed for the record, not asserted."""
    latencies = []
    for _ in range(3):
        latency, _, _, _ = interrupt(spawn("recv"))
        latencies.append(latency)
    print("recv SIGINT latencies (ms):", [round(x * 1000, 1) for x in latencies])
    assert max(latencies) < scaled(0.5), latencies


def test_interrupted_recv_loses_nothing(spawn):
    child = spawn("resume")
    latency, _, out, err = interrupt(child)
    assert child.proc.returncode == 0, err[-2000:]
    assert "resumed ok" in out, (out, err[-2000:])
    assert latency < scaled(0.5)


def test_signal_handler_that_does_not_raise_keeps_waiting(spawn):
    child = spawn("usr1")  # it waits in recv(timeout=1.0)
    assert child.readline(timeout=scaled(20.0)) == "ready"
    for _ in range(3):  # one at a time: each handled (it prints "hit") before the next
        wait_sleeping_in(f"/proc/{child.proc.pid}", SOCKET_WAITS)
        os.kill(child.proc.pid, signal.SIGUSR1)
        assert child.readline(timeout=scaled(1.0)) == "hit"
    out, err = child.finish()
    assert child.proc.returncode == 0, err[-2000:]
    line = [ln for ln in out.splitlines() if ln.startswith("timeout ")]
    assert line, (out, err[-2000:])
    _, hits, elapsed = line[0].split()
    assert int(hits) == 3, "the Python signal handler did not run during the wait"
    assert 0.99 <= float(elapsed) < 1.0 + scaled(0.5), f"recv(timeout=1.0) took {elapsed} s"


# ------------------------------------------- Ctrl-C in the middle of a frame
#
# docs/PROTOCOL.md: "If a deadline passes (or Ctrl-C arrives) while a frame
# is half-written, the rest of that frame is copied into the connection and
# written first by the next send, send_many, flush or shutdown("write") -
# the peer never sees a torn frame followed by another one."  Each case runs
# tests/sigint_tail_child.py; where the peer is this test process, it is a
# stdlib socket that reads nothing until the KeyboardInterrupt was caught,
# then reads the whole stream and decodes it with helpers.decode_stream.

TAIL_CHILD = str(Path(__file__).with_name("sigint_tail_child.py"))
SIGINT_BOUND = scaled(0.5)  # the docs promise ~100 ms; this is the hard limit


@pytest.fixture
def slow_peer():
    """A stdlib listener whose accepted sockets keep a 64 KiB receive window
    (set before listen) and read nothing until the test says so."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ls.settimeout(scaled(20))
    accepted: list[socket.socket] = []

    def accept() -> socket.socket:
        s, _ = ls.accept()
        s.settimeout(scaled(20))
        accepted.append(s)
        return s

    yield ls.getsockname(), accept
    for s in accepted:
        s.close()
    ls.close()


def wait_in_poll(pid: int) -> None:
    """Wait until the main thread of process ``pid`` is blocked in poll: the
    kernel's /proc/PID/syscall shows poll (helpers.waiting_call) with a timeout that
    is not 0 at three samples 0.1 s apart.  A send, flush or shutdown
    waiting for a full socket sits there (a write-behind send still filling
    the buffers makes 0-timeout polls), so the SIGINT lands in the blocked
    call however slowly a loaded machine ran the child up to it."""
    deadline = time.monotonic() + scaled(20)
    call, streak = None, 0
    while time.monotonic() < deadline:
        call = waiting_call(f"/proc/{pid}")
        blocked = call is not None and call[0] == "poll" and call[1][2] != 0  # poll(fds, n, timeout)
        streak = streak + 1 if blocked else 0
        if streak >= 3:
            return
        time.sleep(0.1 if streak else 0.005)
    pytest.fail(f"the child never blocked in poll (last: {call!r})")


def sigint_mid_call(child: Child, before=None, in_poll: bool = False) -> float:
    """Wait for "ready" (and for ``before()``, if given), SIGINT the child
    while it blocks, wait for its "interrupted" line; return the latency.
    ``in_poll``: the call blocks in poll, and the SIGINT waits until the
    child's main thread is seen there (else a short settling pause)."""
    line = child.readline(timeout=scaled(20))
    if line != "ready":
        out, err = child.finish()
        pytest.fail(f"child did not get ready: {line!r} {out!r} {err[-2000:]}")
    if before is not None:
        before()
    if in_poll:
        wait_in_poll(child.proc.pid)
    else:
        time.sleep(0.2)  # let it settle into the blocking call
    assert child.proc.poll() is None, "the child returned instead of blocking"
    t_sig = time.monotonic()
    os.kill(child.proc.pid, signal.SIGINT)
    line = child.readline(timeout=scaled(5))
    if not line.startswith("interrupted "):
        out, err = child.finish()
        pytest.fail(f"no KeyboardInterrupt in the child: {line!r} {out!r} {err[-2000:]}")
    latency = float(line.split()[1]) - t_sig
    assert latency < SIGINT_BOUND, f"KeyboardInterrupt came {latency:.3f} s after SIGINT"
    return latency


def bytes_arrive(sock: socket.socket):
    """A ``before`` hook: wait until the child's first bytes reached sock
    (so its call is under way, far from the end of the frame)."""

    def wait() -> None:
        assert select.select([sock], [], [], scaled(20))[0], "the child sent nothing"

    return wait


def child_result(child: Child) -> dict:
    out, err = child.finish(timeout=scaled(60))
    assert child.proc.returncode == 0, (out, err[-3000:])
    lines = [ln for ln in out.splitlines() if ln.startswith("result ")]
    assert len(lines) == 1, (out, err[-3000:])
    return json.loads(lines[0][len("result "):])


def assert_frames(data: bytes, expected: list[bytes], outcome: str = "closed") -> None:
    """The stream decodes (independently of pysockkit) to exactly
    ``expected``, whole and in order, then ends as ``outcome``."""
    frames, got_outcome, detail = decode_stream(data, 4, "big", 2**32 - 1)
    assert (got_outcome, detail) == (outcome, 0), (got_outcome, detail, len(data))
    assert [len(f) for f in frames] == [len(f) for f in expected]
    for i, (f, e) in enumerate(zip(frames, expected)):
        assert f == e, f"frame {i} differs"


def test_sigint_mid_send_keeps_the_tail(spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("send", *map(str, addr), script=TAIL_CHILD)
    raw = accept()
    sigint_mid_call(child, before=bytes_arrive(raw), in_poll=True)
    data = recv_all(raw, timeout=scaled(60))  # until the child closes
    res = child_result(child)
    assert_frames(data, [tail.payload("A", tail.BIG), tail.payload("B", 100)])
    # the interrupted frame counts as taken, its tail was kept in the
    # connection and went out first with the next send
    assert res["sent"] == 1
    assert 0 < res["kept"] < tail.BIG + 4
    assert res["unsent_after"] == 0


def test_sigint_mid_write_behind_send_keeps_the_queue_whole(spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("send_wb", *map(str, addr), script=TAIL_CHILD)
    raw = accept()
    sigint_mid_call(child, before=bytes_arrive(raw), in_poll=True)
    data = recv_all(raw, timeout=scaled(60))
    res = child_result(child)
    # the interrupted send took nothing (its frame was not queued); the
    # frames queued before it stayed queued and went out whole, in order.
    # `kept` (the queue read just after the KeyboardInterrupt) may already
    # be 0: the peer's full window still lets a few KB in now and then, and
    # the write-behind flusher thread, armed by an earlier send, writes the
    # queue as soon as the interrupted send lets go of the lock (seen under
    # load: kept ranged 4.8-65 KB over 25 runs, and 0 twice in 12).  What
    # must hold is the stream: every queued frame, whole, then B.
    assert res["sent"] == 0 and res["ok"] > 0
    assert 0 <= res["kept"] <= 64 << 10 and res["unsent_after"] == 0
    assert_frames(data, [tail.payload(f"W {i}", tail.WB_SIZE) for i in range(res["ok"])]
                  + [tail.payload("B", 100)])


def test_sigint_mid_send_many_keeps_the_tail_and_says_how_many(spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("send_many", *map(str, addr), script=TAIL_CHILD)
    raw = accept()
    sigint_mid_call(child, before=bytes_arrive(raw), in_poll=True)
    data = recv_all(raw, timeout=scaled(60))
    res = child_result(child)
    k = res["sent"]  # frames taken, the torn one included
    assert 0 < k < tail.MANY, res
    assert_frames(data, tail.many()[:k] + [tail.payload("B", 100)])
    assert res["kept"] > 0 and res["unsent_after"] == 0


def test_sigint_mid_flush_keeps_the_rest(spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("flush", *map(str, addr), script=TAIL_CHILD)
    raw = accept()
    sigint_mid_call(child, in_poll=True)
    data = recv_all(raw, timeout=scaled(60))
    res = child_result(child)
    assert_frames(data, [tail.payload("A", tail.BIG), tail.payload("B", 100)])
    assert res["timeout_sent"] == 1  # the timed-out send had begun the frame
    assert res["kept"] > 0 and res["unsent_after"] == 0


def test_sigint_mid_shutdown_keeps_the_tail_and_sends_fin_after_it(spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("shutdown", *map(str, addr), script=TAIL_CHILD)
    raw = accept()
    sigint_mid_call(child, in_poll=True)
    data = recv_all(raw, timeout=scaled(60))  # the FIN comes after the whole frame
    raw.sendall(tail_frame(b"bye"))
    res = child_result(child)
    assert_frames(data, [tail.payload("A", tail.BIG)])
    assert res["kept"] > 0
    # documented: after shutdown("write") sending raises ConnectionClosed,
    # receiving still works
    assert res["after_fin"] == "ConnectionClosed"
    assert res["got"] == "bye"


def tail_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def test_sigint_in_call_waiting_for_the_reply(spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("call_reply", *map(str, addr), script=TAIL_CHILD)
    first = accept()
    request: list[bytes] = []

    def request_arrived() -> None:  # the child now waits for the reply
        n = int.from_bytes(recv_exact(first, 4), "big")
        request.append(recv_exact(first, n))

    sigint_mid_call(child, before=request_arrived)
    # call() closed its connection after the interrupt: orderly, after
    # exactly the one request
    assert request == [tail.payload("R", 1000)]
    assert recv_all(first) == b""
    second = accept()
    n = int.from_bytes(recv_exact(second, 4), "big")
    assert recv_exact(second, n) == tail.payload("R2", 1000)
    second.sendall(tail_frame(b"pong"))
    assert child_result(child) == {"reply": "pong"}


def test_sigint_in_call_mid_request_ends_in_a_documented_incomplete_frame(
        spawn, slow_peer) -> None:
    addr, accept = slow_peer
    child = spawn("call_mid_frame", *map(str, addr), script=TAIL_CHILD)
    first = accept()
    sigint_mid_call(child, before=bytes_arrive(first))
    # call() closes its connection at once (close never waits), so the
    # rest of the frame is dropped: the peer sees a frame cut short by FIN
    # (docs/PROTOCOL.md "End of stream": sk.IncompleteFrame), never a torn
    # frame followed by another one
    data = recv_all(first, timeout=scaled(60))
    frames, outcome, missing = decode_stream(data, 4, "big", 2**32 - 1)
    assert (frames, outcome) == ([], "incomplete")
    assert missing == tail.BIG + 4 - len(data) and 0 < missing < tail.BIG
    assert data[4:] == tail.payload("A", tail.BIG)[: len(data) - 4]
    second = accept()
    n = int.from_bytes(recv_exact(second, 4), "big")
    assert recv_exact(second, n) == tail.payload("R2", 1000)
    second.sendall(tail_frame(b"pong"))
    assert child_result(child) == {"reply": "pong"}


def test_sigint_in_duplex_get_loses_no_frame(spawn) -> None:
    child = spawn("get", script=TAIL_CHILD)
    sigint_mid_call(child)
    res = child_result(child)
    assert res["first_ok"] is True  # the frame half-received at the interrupt
    assert res["second"] == "M2"
    assert res["reply"] == "STILL USABLE?"
    assert res["stats"]["replies"] == 1 and res["stats"]["messages"] == 2


@pytest.mark.parametrize("case", ["simplex_wait", "simplex_send"])
def test_sigint_in_simplex_request_keeps_the_links_in_step(spawn, case) -> None:
    child = spawn(case, script=TAIL_CHILD)
    sigint_mid_call(child)
    res = child_result(child)
    big_len, big_sha = res["big"]
    assert res["reply"] == "NEXT"
    assert res["pending"] == 0 and res["unknown"] == 0 and res["duplicate"] == 0
    seen = [tuple(x) for x in res["seen"]]

    def sha(p: bytes) -> str:
        return hashlib.sha256(p).hexdigest()

    if case == "simplex_wait":
        # the interrupted request was answered later; its reply settled its
        # own (abandoned) future, and the next request got its own reply
        assert seen == [(4, sha(b"slow")), (4, sha(b"next"))]
        assert res["replied"] == 2 and res["late"] == 0
    else:
        # the big request was cut by Ctrl-C; its tail went out before the
        # next request, so the server got every request whole, in order,
        # and the reply to the abandoned one is dropped as late
        assert seen == [(4, sha(b"slow")), (big_len, big_sha), (4, sha(b"next"))]
        assert res["replied"] == 2 and res["late"] == 1
