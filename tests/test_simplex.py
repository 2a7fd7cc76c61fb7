"""Asynchronous simplex mode (pysockkit.simplex) over real loopback sockets.

Requests travel on one link and replies on another, matched by correlation
id.  The misbehaving peers here are written with nothing but sk.listen /
sk.connect and the handshake frames of docs/PROTOCOL.md ("Simplex links"),
so they also check that the documented wire format is the real one.  The
two-process tests run examples/simplex_receiver.py and
examples/simplex_sender.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import pysockkit as sk
from pysockkit import simplex
from helpers import wait_until as poll_until
from hardening import under_sanitizer
from helpers import child_env, scaled

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STEP = scaled(10.0)  # upper bound of any single wait
LO = ("127.0.0.1", 0)
FR = sk.Framing(correlation=True)
REPLY = 1 << 63
LINK_ERROR = re.compile(
    r"simplex (request|reply) link to 127\.0\.0\.1:\d+ .*; \d+ pending requests failed"
)

# the handshake frames, straight from docs/PROTOCOL.md
OK_ACK = b"SKSX\x01\x00\x00\x00"


def hello(role: int, token: bytes, flags: int = 0) -> bytes:
    return b"SKSX" + bytes([1, role, flags, 0]) + token


def wait_until(pred: Callable[[], bool], timeout: float = STEP) -> None:
    """Assert that pred() becomes true within timeout (helpers.wait_until polls)."""
    assert poll_until(pred, timeout=timeout), "condition not reached in time"


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stopped(pid: int) -> bool:
    """True once process pid is stopped (SIGSTOP takes effect asynchronously)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def failure_of(fut: "Future[bytes]", timeout: float = STEP) -> BaseException:
    exc = fut.exception(timeout)
    assert exc is not None, "the future succeeded"
    return exc


# --------------------------------------------------------------- fixtures


@pytest.fixture
def closer():
    items: list[Any] = []
    yield items.append
    for obj in reversed(items):
        obj.close()


class RawServer:
    """A hand-written simplex server: it does the handshake by the book,
    then does whatever the test tells it to with the two raw links."""

    def __init__(self, closer: Callable[[Any], None]) -> None:
        self.req_l = sk.listen(LO, framing=FR)
        closer(self.req_l)
        self.rep_l = sk.listen(LO, framing=FR)
        closer(self.rep_l)
        self._closer = closer
        self.request: Optional[sk.Connection] = None  # server side of the request link
        self.reply: Optional[sk.Connection] = None  # server side of the reply link
        self.error: Optional[BaseException] = None

    def _pair(self) -> None:
        try:
            rep = self.rep_l.accept(timeout=STEP)
            self._closer(rep)
            h = rep.recv(timeout=STEP)
            assert isinstance(h, bytes) and len(h) == 24 and h[:6] == b"SKSX\x01\x01", h
            token = h[8:]
            rep.send(OK_ACK)
            req = self.req_l.accept(timeout=STEP)
            self._closer(req)
            h2 = req.recv(timeout=STEP)
            assert h2 == hello(2, token), h2
            req.send(OK_ACK)
            req.shutdown("write")
            self.reply, self.request = rep, req
        except BaseException as exc:  # reported by client()
            self.error = exc

    def client(self, **kw: Any) -> simplex.Client:
        t = threading.Thread(target=self._pair)
        t.start()
        try:
            cli = simplex.Client(self.req_l.address, self.rep_l.address, connect_timeout=STEP, **kw)
        finally:
            t.join(STEP)
        self._closer(cli)
        assert self.error is None, self.error
        return cli

    def take(self, n: int) -> list[tuple[int, bytes]]:
        assert self.request is not None
        got: list[Any] = []
        deadline = time.monotonic() + STEP
        while len(got) < n:
            left = max(0.0, deadline - time.monotonic())
            got += self.request.recv_many(n - len(got), timeout=left)
        return got


def raw_client(srv: simplex.Server, closer: Callable[[Any], None],
               token: bytes = b"T" * 16) -> tuple[sk.Connection, sk.Connection]:
    """A hand-written client: handshake by the book, returns (request, reply)."""
    rep = sk.connect(srv.reply_address, timeout=STEP, framing=FR)
    closer(rep)
    rep.send(hello(1, token))
    rep.shutdown("write")
    assert rep.recv(timeout=STEP) == OK_ACK
    req = sk.connect(srv.request_address, timeout=STEP, framing=FR)
    closer(req)
    req.send(hello(2, token))
    assert req.recv(timeout=STEP) == OK_ACK
    req.shutdown("read")
    return req, rep


def pair(closer: Callable[[Any], None], handler: simplex.Handler = bytes.upper,
         client_kw: Optional[dict[str, Any]] = None, **server_kw: Any
         ) -> tuple[simplex.Server, simplex.Client]:
    srv = simplex.Server(LO, LO, handler, **server_kw)
    closer(srv)
    cli = simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP,
                         **(client_kw or {}))
    closer(cli)
    return srv, cli


# ------------------------------------------------------------- basic use


def test_request_and_links_are_one_way(closer) -> None:
    srv, cli = pair(closer)
    assert cli.request(b"hello", timeout=STEP) == b"HELLO"
    # the server sent FIN on the request link, the client on the reply link
    assert cli.request_link.state == sk.TcpState.CLOSE_WAIT
    assert cli.reply_link.state in (sk.TcpState.FIN_WAIT_1, sk.TcpState.FIN_WAIT_2)
    wait_until(lambda: srv.stats.sessions == 1)
    s = cli.stats
    assert (s.sent, s.replied, s.pending, s.late, s.unknown, s.duplicate) == (1, 1, 0, 0, 0, 0)


def test_1000_requests_in_flight_matched_out_of_order(closer) -> None:
    def handler(req: bytes) -> bytes:
        n = int(req)
        time.sleep(0.002 if n % 7 == 0 else 0)  # later chunks overtake earlier ones
        return b"%d squared is %d" % (n, n * n)

    srv, cli = pair(closer, handler, workers=8)
    order: list[int] = []
    futs = []
    for i in range(1000):
        fut = cli.request_async(b"%d" % i, timeout=STEP)
        fut.add_done_callback(lambda f, i=i: order.append(i))
        futs.append(fut)
    assert [f.result(STEP) for f in futs] == [b"%d squared is %d" % (i, i * i) for i in range(1000)]
    assert sorted(order) == list(range(1000))
    assert order != sorted(order), "replies should have come back out of order"
    s = cli.stats
    assert (s.sent, s.replied, s.pending) == (1000, 1000, 0)
    assert srv.stats.requests == 1000


def test_handler_error_is_a_remote_error_and_the_client_goes_on(closer) -> None:
    def handler(req: bytes) -> bytes:
        if req == b"boom":
            raise ValueError("cannot handle boom")
        return req

    srv, cli = pair(closer, handler, workers=0)
    with pytest.raises(simplex.RemoteError, match="ValueError: cannot handle boom"):
        cli.request(b"boom", timeout=STEP)
    assert cli.request(b"fine", timeout=STEP) == b"fine"
    assert cli.stats.errors == 1 and srv.stats.handler_errors == 1


def test_timed_out_request_late_reply_is_dropped_not_misdelivered(closer) -> None:
    def handler(req: bytes) -> bytes:
        if req.startswith(b"slow"):
            time.sleep(0.3)
        return b"reply to " + req

    srv, cli = pair(closer, handler, workers=2)
    with pytest.raises(sk.Timeout, match="late reply will be dropped"):
        cli.request(b"slow 1", timeout=0.05)
    fut = cli.request_async(b"slow 2", timeout=0.05)
    assert isinstance(failure_of(fut), sk.Timeout)
    # the next requests get their own replies, never the late ones
    assert cli.request(b"fast", timeout=STEP) == b"reply to fast"
    wait_until(lambda: cli.stats.late == 2)
    assert cli.request(b"fast again", timeout=STEP) == b"reply to fast again"
    s = cli.stats
    assert (s.timed_out, s.late, s.replied, s.unknown, s.duplicate) == (2, 2, 2, 0, 0)


def test_close_fails_pending_requests_and_frees_the_session(closer) -> None:
    gate = threading.Event()

    def handler(req: bytes) -> bytes:
        gate.wait(STEP)
        return req

    srv, cli = pair(closer, handler, workers=1)
    futs = [cli.request_async(b"x", timeout=STEP) for _ in range(5)]
    cli.close()
    gate.set()
    for f in futs:
        exc = failure_of(f)
        assert type(exc) is sk.ConnectionClosed
        assert "simplex client was closed by this program; 5 pending requests failed" in str(exc)
    with pytest.raises(sk.ConnectionClosed, match="no automatic reconnect"):
        cli.request(b"again", timeout=1.0)
    cli.close()  # idempotent
    wait_until(lambda: srv.stats.sessions == 0)
    assert cli.stats.failed == 5


def test_max_pending_blocks_then_times_out(closer) -> None:
    raw = RawServer(closer)
    cli = raw.client(max_pending=4)
    futs = [cli.request_async(b"%d" % i) for i in range(4)]
    t0 = time.monotonic()
    with pytest.raises(sk.Timeout, match="max_pending"):
        cli.request_async(b"no room", timeout=0.1)
    assert 0.09 < time.monotonic() - t0 < scaled(2.0)
    # a waiting request gets the slot freed by a reply
    later: list[Any] = []
    t = threading.Thread(target=lambda: later.append(cli.request_async(b"later", timeout=STEP)))
    t.start()
    got = raw.take(4)
    assert [p for _, p in got] == [b"0", b"1", b"2", b"3"]
    assert raw.reply is not None
    raw.reply.send(b"r0", id=got[0][0] | REPLY)
    t.join(STEP)
    assert futs[0].result(STEP) == b"r0"
    (rid, payload), = raw.take(1)
    assert payload == b"later"
    raw.reply.send(b"r-later", id=rid | REPLY)
    assert later[0].result(STEP) == b"r-later"
    assert cli.pending == 3


# ------------------------------------------------- bad behaviour of peers


def test_unknown_duplicate_late_and_stray_replies_are_counted(closer) -> None:
    raw = RawServer(closer)
    cli = raw.client()
    f1 = cli.request_async(b"one", timeout=STEP)
    f2 = cli.request_async(b"two", timeout=0.05)
    (id1, p1), (id2, p2) = raw.take(2)
    assert (p1, p2) == (b"one", b"two") and id1 & REPLY == 0
    assert isinstance(failure_of(f2), sk.Timeout)
    rep = raw.reply
    assert rep is not None
    rep.send(b"too late", id=id2 | REPLY)  # late
    rep.send(b"who?", id=123456 | REPLY)  # unknown: never issued
    rep.send(b"ONE", id=id1 | REPLY)  # the real reply
    rep.send(b"ONE again", id=id1 | REPLY)  # duplicate
    rep.send(b"too late again", id=id2 | REPLY)  # late again: the C book (the duplex's and
    # aio's rule too) remembers the expired id; simplex counted it a duplicate before
    rep.send(b"a plain frame")  # not a reply
    rep.send(b"a request", id=7)  # not a reply either
    assert f1.result(STEP) == b"ONE"
    wait_until(lambda: cli.stats.unexpected == 2)
    s = cli.stats
    assert (s.late, s.unknown, s.duplicate, s.unexpected, s.replied) == (2, 1, 1, 2, 1)
    # and the client still works
    f3 = cli.request_async(b"three", timeout=STEP)
    (id3, p3), = raw.take(1)
    rep.send(b"THREE", id=id3 | REPLY)
    assert f3.result(STEP) == b"THREE"


def test_reply_flood_is_counted_and_a_server_that_does_not_read_times_out(closer) -> None:
    raw = RawServer(closer)
    cli = raw.client(max_pending=16)
    rep = raw.reply
    assert rep is not None
    n = 300_000  # ~23 MB on the wire; kept as bytes objects it would be ~40 MB
    flood = [((1 << 40) | REPLY, b"f" * 64)] * 1000
    rss0 = rss()

    def flooder() -> None:
        for _ in range(n // 1000):
            rep.send_many(flood, timeout=STEP)

    t = threading.Thread(target=flooder)
    t.start()
    # meanwhile the server never reads the request link: big requests fill
    # the socket buffers, then a send times out instead of hanging
    big = b"x" * (1 << 20)
    timed_out = None
    accepted = 0
    for _ in range(64):
        try:
            cli.request_async(big, timeout=0.3)
            accepted += 1
        except sk.Timeout as exc:
            timed_out = exc
            break
    t.join(STEP)
    assert timed_out is not None and "not sent" in str(timed_out)
    assert "request link" in str(timed_out)
    wait_until(lambda: cli.stats.unknown == n)
    wait_until(lambda: cli.pending == 0)  # the others timed out
    # every accepted request was sent and timed out unanswered, and the
    # refused one counts as timed out too (never sent)
    assert accepted >= 1
    assert (cli.stats.sent, cli.stats.timed_out, cli.stats.replied) == (accepted, accepted + 1, 0)
    assert cli.reply_link.buffered < 1 << 20  # the flood was read and dropped, not kept
    if not under_sanitizer():  # ASan's quarantine and shadow make RSS meaningless
        assert rss() - rss0 < 16 << 20


def test_server_drops_a_client_that_does_not_read_and_serves_the_others(closer) -> None:
    srv = simplex.Server(LO, LO, lambda req: req * 2048, max_inflight=64, send_timeout=0.5)
    closer(srv)
    good = simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP)
    closer(good)
    req, _rep = raw_client(srv, closer)  # never reads its reply link
    peak = 0
    sent = 0
    deadline = time.monotonic() + STEP
    while srv.stats.dropped == 0:
        assert time.monotonic() < deadline
        try:
            sent += req.send_many([(i, b"0123456789abcdef") for i in range(sent, sent + 100)],
                                  timeout=0.05)
        except sk.Timeout as exc:
            sent += exc.sent  # type: ignore[attr-defined]
        except sk.ConnectionClosed:
            break  # the server dropped us
        # per session (the bound is per client): stats.inflight sums them,
        # and the good client's last request still counts there until the
        # server's writer, after sending its reply, takes it off (seen: 65)
        peak = max(peak, max((x.inflight for x in list(srv._sessions.values())), default=0))
        assert good.request(b"still there?", timeout=STEP) == b"still there?" * 2048
    wait_until(lambda: srv.stats.dropped == 1)
    assert peak <= 64  # never more than max_inflight unanswered requests
    assert sent > 64
    assert good.request(b"ok", timeout=STEP) == b"ok" * 2048
    wait_until(lambda: srv.stats.sessions == 1)


def test_handshake_refusals_are_typed_and_the_server_keeps_serving(closer) -> None:
    srv = simplex.Server(LO, LO, bytes.upper, handshake_timeout=0.3)
    closer(srv)
    with pytest.raises(simplex.HandshakeError, match="wrong link") as ei:
        simplex.Client(srv.reply_address, srv.request_address, connect_timeout=STEP)
    assert ei.value.status == 6
    with pytest.raises(simplex.HandshakeError, match="heartbeat setting differs"):
        simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP,
                       heartbeat=sk.Heartbeat(0.5, 1.5))
    # a request link whose token has no reply link
    c = sk.connect(srv.request_address, timeout=STEP, framing=FR)
    closer(c)
    c.send(hello(2, b"\0" * 16))
    ack = c.recv(timeout=STEP)
    assert ack[:8] == b"SKSX\x01\x02\x00\x00" and b"open the reply link first" in ack
    # garbage instead of a registration
    g = sk.connect(srv.reply_address, timeout=STEP, framing=FR)
    closer(g)
    g.send(b"GET / HTTP/1.1\r\n\r\n")
    assert g.recv(timeout=STEP)[:6] == b"SKSX\x01\x01"
    # a reply link whose request link never comes is dropped after handshake_timeout
    r = sk.connect(srv.reply_address, timeout=STEP, framing=FR)
    closer(r)
    r.send(hello(1, b"R" * 16))
    assert r.recv(timeout=STEP) == OK_ACK
    with pytest.raises(sk.ConnectionClosed):
        r.recv(timeout=STEP)
    wait_until(lambda: srv.stats.rejected == 5)
    with simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP) as cli:
        assert cli.request(b"served", timeout=STEP) == b"SERVED"


# ----------------------------------------------------------- link drops


def test_reply_link_closed_fails_pending_naming_it(closer) -> None:
    raw = RawServer(closer)
    cli = raw.client()
    futs = [cli.request_async(b"%d" % i, timeout=STEP) for i in range(12)]
    raw.take(12)
    assert raw.reply is not None
    raw.reply.close()
    port = raw.rep_l.address[1]
    for f in futs:
        exc = failure_of(f)
        assert type(exc) is sk.ConnectionClosed
        assert str(exc) == (f"simplex reply link to 127.0.0.1:{port} closed; "
                            "12 pending requests failed")
    with pytest.raises(sk.ConnectionClosed, match=f"reply link to 127.0.0.1:{port} closed"):
        cli.request(b"more", timeout=1.0)
    assert cli.closed and cli.stats.failed == 12


def test_request_link_reset_fails_pending_naming_it(closer) -> None:
    raw = RawServer(closer)
    cli = raw.client()
    futs = [cli.request_async(b"%d" % i, timeout=STEP) for i in range(3)]
    raw.take(3)
    assert raw.request is not None
    t0 = time.monotonic()
    raw.request.abort()  # RST
    exc = failure_of(futs[0])
    assert time.monotonic() - t0 < scaled(1.0)
    assert isinstance(exc, sk.ConnectionReset)
    assert LINK_ERROR.search(str(exc)) and "request link" in str(exc)
    assert all(isinstance(failure_of(f), sk.ConnectionReset) for f in futs)


def test_request_link_closed_is_found_by_the_next_request(closer) -> None:
    raw = RawServer(closer)
    cli = raw.client()
    assert raw.request is not None
    # the server already sent FIN (one-way link): a close sends nothing more,
    # so the client learns it from the RST that answers its next request
    raw.request.close()
    try:
        fut = cli.request_async(b"into the void", timeout=STEP)
        exc = failure_of(fut)
    except sk.ConnectionClosed as e:
        exc = e
    assert isinstance(exc, sk.ConnectionClosed) and "simplex request link" in str(exc)
    with pytest.raises(sk.ConnectionClosed, match="simplex request link"):
        cli.request(b"more", timeout=1.0)


# ---------------------------------------------------------- two processes


class Receiver:
    """examples/simplex_receiver.py in its own process."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "simplex_receiver.py"), "--seconds", "30", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.match(r"simplex receiver ready: request link (\S+):(\d+) reply link (\S+):(\d+)",
                     line)
        if m is None:
            self.close()
            raise AssertionError(f"receiver did not start: {line!r}")
        self.request_addr = (m[1], int(m[2]))
        self.reply_addr = (m[3], int(m[4]))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=STEP)
        assert self.proc.returncode == 0, err
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=STEP)


def test_sender_and_receiver_examples_in_two_processes(closer) -> None:
    rx = Receiver()
    closer(rx)
    rq, rp = rx.request_addr, rx.reply_addr
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "simplex_sender.py"), f"{rq[0]}:{rq[1]}",
         f"{rp[0]}:{rp[1]}", "-n", "1000", "--timeout", "10"],
        capture_output=True, text=True, timeout=30, env=child_env(),
    )
    assert out.returncode == 0, out.stderr
    # a snapshot taken right after the handshake: the reply link is ours to
    # shut (FIN_WAIT_1/2 at once); the request link reaches CLOSE_WAIT when
    # the receiver's FIN, sent just after its ACK (docs/PROTOCOL.md), has
    # arrived, which on a loaded machine may be after the sender printed
    assert re.search(r"request link (CLOSE_WAIT|ESTABLISHED), reply link FIN_WAIT_[12]\n",
                     out.stdout)
    assert "reply 0: b'echo:request 0'" in out.stdout
    assert "1000 of 1000 replies matched their requests" in out.stdout
    assert "stats: sent=1000 replied=1000 late=0 unknown=0 duplicate=0" in out.stdout
    stopped = rx.stop()
    assert "1 sessions, 1000 requests, 1000 replies, 0 dropped" in stopped


def test_killing_the_receiver_process_fails_pending_requests(closer) -> None:
    rx = Receiver("--delay", "1.0", "--workers", "1")
    closer(rx)
    cli = simplex.Client(rx.request_addr, rx.reply_addr, connect_timeout=STEP)
    closer(cli)
    futs = [cli.request_async(b"%d" % i, timeout=STEP) for i in range(10)]
    wait_until(lambda: cli.stats.sent == 10)
    time.sleep(0.1)  # the receiver is now inside its slow handler
    t0 = time.monotonic()
    rx.proc.kill()
    excs = [failure_of(f) for f in futs]
    assert time.monotonic() - t0 < scaled(2.0)
    for exc in excs:
        assert isinstance(exc, sk.ConnectionClosed), exc
        assert LINK_ERROR.search(str(exc)), str(exc)
    with pytest.raises(sk.ConnectionClosed, match="simplex (request|reply) link"):
        cli.request(b"anyone?", timeout=1.0)


def test_heartbeats_detect_a_frozen_receiver_process(closer) -> None:
    rx = Receiver("--heartbeat", "0.2")
    closer(rx)
    hb = sk.Heartbeat(0.2, 0.6)
    cli = simplex.Client(rx.request_addr, rx.reply_addr, heartbeat=hb, connect_timeout=STEP)
    closer(cli)
    assert cli.request(b"alive?", timeout=STEP) == b"echo:alive?"
    # with heartbeats the unused directions stay open for PING/PONG
    assert cli.request_link.state == sk.TcpState.ESTABLISHED
    os.kill(rx.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: stopped(rx.proc.pid))
        t0 = time.monotonic()
        futs = [cli.request_async(b"%d" % i, timeout=STEP) for i in range(5)]
        exc = failure_of(futs[0])
        elapsed = time.monotonic() - t0
    finally:
        os.kill(rx.proc.pid, signal.SIGCONT)
    assert isinstance(exc, sk.PeerDead), exc
    assert re.search(r"simplex (request|reply) link to 127\.0\.0\.1:\d+ is dead", str(exc))
    assert elapsed < 0.2 + 0.6 + scaled(0.5)
    assert all(isinstance(failure_of(f), sk.PeerDead) for f in futs)


# ------------------------------------------------------ more bad behaviour


def test_oversized_request_is_refused_and_the_client_goes_on(closer) -> None:
    fr = sk.Framing(max_frame=1024, correlation=True)
    _srv, cli = pair(closer, framing=fr, client_kw={"framing": fr})
    with pytest.raises(sk.FrameTooLarge):
        cli.request(b"x" * 2000, timeout=STEP)
    assert cli.request(b"small", timeout=STEP) == b"SMALL"
    assert cli.stats.sent == 1 and not cli.closed


def test_server_drops_a_client_sending_garbage_and_serves_the_others(closer) -> None:
    srv, good = pair(closer)
    req, _rep = raw_client(srv, closer)
    req.send(b"a plain frame")  # not a request: dropped and counted
    req.send(b"a reply?", id=5 | REPLY)  # neither
    wait_until(lambda: srv.stats.unexpected == 2)
    os.write(req.fileno(), b"\x3f\xff\xff\xff")  # a correlated header over max_frame
    wait_until(lambda: srv.stats.dropped == 1)
    assert good.request(b"fine", timeout=STEP) == b"FINE"
    wait_until(lambda: srv.stats.sessions == 1)


# ------------------------------------------------------------------ docs

DOC = ROOT / "docs" / "modes.md"
HEADING = "## Asynchronous simplex: pysockkit.simplex"


def _doc_blocks() -> list[tuple[int, str]]:
    text = DOC.read_text()
    start = text.index("\n" + HEADING + "\n") + 1
    nxt = re.compile(r"^## ", re.M).search(text, start + len(HEADING))
    section = text[start:nxt.start() if nxt else len(text)]
    first = text.count("\n", 0, start) + 1
    return [(first + section.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", section, re.M | re.S)]


DOC_BLOCKS = _doc_blocks()


def test_the_docs_have_simplex_examples() -> None:
    assert len(DOC_BLOCKS) >= 3
    proto = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert "\n## Simplex links\n" in proto


@pytest.mark.parametrize("line,code", DOC_BLOCKS, ids=[f"line{n}" for n, _ in DOC_BLOCKS])
def test_docs_example_runs(line: int, code: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=30, env=child_env())
    assert proc.returncode == 0, f"docs/modes.md:{line}\n{proc.stderr}"
    assert proc.stderr == "", f"docs/modes.md:{line}\n{proc.stderr}"
    for comment in re.findall(r"#\s+(b'[^']*')", code):  # the printed values shown
        assert comment in proc.stdout, f"docs/modes.md:{line}: {comment} not printed"


# ------------------------------------- the server's limits (docs/PROTOCOL.md)


def test_max_sessions_refuses_with_status_3_and_frees_the_slot(closer) -> None:
    srv = simplex.Server(LO, LO, bytes.upper, max_sessions=1)
    closer(srv)
    first = simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP)
    with pytest.raises(simplex.HandshakeError,
                       match=r"reply link to .*: refused by the server: server busy "
                             r"\(1 sessions \(max_sessions\)\)") as ei:
        simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP)
    assert ei.value.status == 3
    # by the book: ACK with status 3 and the reason, then FIN
    raw = sk.connect(srv.reply_address, timeout=STEP, framing=FR)
    closer(raw)
    raw.send(hello(1, b"B" * 16))
    ack = raw.recv(timeout=STEP)
    assert ack[:8] == b"SKSX\x01\x03\x00\x00" and ack[8:] == b"1 sessions (max_sessions)"
    with pytest.raises(sk.ConnectionClosed):
        raw.recv(timeout=STEP)
    wait_until(lambda: srv.stats.rejected == 2)
    # the session in place is served on; once it ends, its slot is free
    assert first.request(b"first", timeout=STEP) == b"FIRST"
    first.close()
    wait_until(lambda: srv.stats.sessions == 0)
    deadline = time.monotonic() + STEP
    while True:  # its two links are released when the server sees them close
        try:
            second = simplex.Client(srv.request_address, srv.reply_address,
                                    connect_timeout=STEP)
            break
        except simplex.HandshakeError as exc:
            assert exc.status == 3 and time.monotonic() < deadline, exc
            time.sleep(0.01)
    closer(second)
    assert second.request(b"second", timeout=STEP) == b"SECOND"


def test_duplicate_session_token_is_refused_with_status_4(closer) -> None:
    srv, cli = pair(closer)
    assert cli.request(b"a", timeout=STEP) == b"A"
    # a reply link registering the token of a live session
    token = bytes.fromhex(cli.session)
    dup = sk.connect(srv.reply_address, timeout=STEP, framing=FR)
    closer(dup)
    dup.send(hello(1, token))
    dup.shutdown("write")
    ack = dup.recv(timeout=STEP)
    assert ack[:8] == b"SKSX\x01\x04\x00\x00", ack
    assert ack[8:] == b"a session with this token exists"
    with pytest.raises(sk.ConnectionClosed):  # then FIN
        dup.recv(timeout=STEP)
    wait_until(lambda: srv.stats.rejected == 1)
    # the session that owns the token is untouched
    assert cli.request(b"b", timeout=STEP) == b"B"
    assert srv.stats.sessions == 1
    # and so is a second request link for it
    req = sk.connect(srv.request_address, timeout=STEP, framing=FR)
    closer(req)
    req.send(hello(2, token))
    ack = req.recv(timeout=STEP)
    assert ack == b"SKSX\x01\x04\x00\x00this session already has its request link", ack
    wait_until(lambda: srv.stats.rejected == 2)
    assert cli.request(b"c", timeout=STEP) == b"C"


def test_max_inflight_bytes_stops_reading_and_the_sender_blocks(closer) -> None:
    size, limit, n = 64 << 10, 256 << 10, 256  # 16 MiB in all: more than TCP buffers
    gate = threading.Event()

    def handler(p: bytes) -> bytes:
        gate.wait(STEP)
        return p[:8]

    srv, cli = pair(closer, handler, max_inflight_bytes=limit)
    payloads = [i.to_bytes(8, "big") * (size // 8) for i in range(n)]
    futs: list[Future[bytes]] = []

    def sender() -> None:
        for p in payloads:
            futs.append(cli.request_async(p, timeout=scaled(60)))

    t = threading.Thread(target=sender)
    t.start()
    try:
        # the server reads requests until their bytes reach the limit, then
        # stops: TCP's window closes and the sender blocks in send
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() - since < scaled(1.0):  # no progress for that long
            assert time.monotonic() < deadline, "the sender never blocked"
            sent = cli.stats.sent
            if sent != last:
                last, since = sent, time.monotonic()
            time.sleep(0.02)
        assert t.is_alive() and len(futs) < n
        st = srv.stats
        assert st.requests == st.inflight == limit // size, st  # exactly the bytes bound
        # another request cannot be sent meanwhile: sk.Timeout, nothing sent
        with pytest.raises(sk.Timeout, match="not sent within 0.2 s"):
            cli.request_async(b"no room", timeout=0.2)
        assert srv.stats.requests == limit // size
    finally:
        gate.set()
        t.join(scaled(60))
    assert not t.is_alive()
    assert [f.result(scaled(30)) for f in futs] == [p[:8] for p in payloads]
    wait_until(lambda: srv.stats.requests == n and srv.stats.inflight == 0)
    st = cli.stats
    assert (st.replied, st.late, st.unknown, st.duplicate) == (n, 0, 0, 0)
