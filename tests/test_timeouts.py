"""Timeouts: they fire on time, raise sk.Timeout (a TimeoutError), lose no
byte and leave the connection usable."""

from __future__ import annotations

import math
import socket
import time

import pytest

import pysockkit as sk
from helpers import (
    STEP_TIMEOUT,
    encode,
    kernel_queues,
    recv_frame,
    scaled,
    settled_queues,
    start_thread,
    wait_blocked_on_socket,
    wait_until,
)

# a timeout of T must raise no earlier than T - EARLY and no later than LATE
EARLY = 0.01
LATE = scaled(1.0)
# a call with timeout=0 returns within this (it must not wait at all; the
# bound only has to be far below any real wait and above a loaded
# machine's scheduling delays)
NO_WAIT = scaled(0.25)


class Elapsed:
    """with Elapsed() as e: ...; e.seconds"""

    def __enter__(self) -> "Elapsed":
        self.t0 = time.monotonic()
        self.seconds = math.nan
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.t0


def assert_timeout_bounds(seconds: float, timeout: float) -> None:
    assert timeout - EARLY <= seconds <= LATE, (
        f"timeout={timeout} raised after {seconds:.3f} s"
    )


def assert_is_timeout(exc: BaseException) -> None:
    assert isinstance(exc, sk.Timeout)
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, sk.Error)
    assert isinstance(exc, OSError)


# ------------------------------------------------------------- slow peer


@pytest.mark.parametrize("api", ["recv", "recv_many"])
def test_slow_peer_dribbling_bytes(raw_to_conn, api):
    """A frame that arrives a few bytes at a time with a timeout between
    the pieces: each timeout keeps every byte read so far (exactly what
    was sent), and the last piece completes the frame."""
    raw, conn = raw_to_conn(nodelay=True)
    payload = b"slow-but-sure"
    wire = encode(payload)  # 17 bytes
    cuts = [1, 3, 4, 9, 16]  # inside the header, at its end, inside the payload
    for start, end in zip([0] + cuts, cuts):
        raw.sendall(wire[start:end])
        # the piece is in conn's kernel receive queue before the wait starts
        assert wait_until(lambda: kernel_queues(conn.fileno())[0] == end - start,
                          timeout=STEP_TIMEOUT)
        t0 = time.monotonic()
        with pytest.raises(sk.Timeout) as ei:
            if api == "recv":
                conn.recv(timeout=0.05)
            else:
                conn.recv_many(timeout=0.05)
        assert_is_timeout(ei.value)
        assert_timeout_bounds(time.monotonic() - t0, 0.05)
        assert conn.buffered == end
    raw.sendall(wire[cuts[-1]:])
    if api == "recv":
        assert conn.recv(timeout=STEP_TIMEOUT) == payload
    else:
        assert conn.recv_many(timeout=STEP_TIMEOUT) == [payload]
    assert conn.buffered == 0
    # and the connection goes on normally
    raw.sendall(encode(b"next"))
    assert conn.recv(timeout=STEP_TIMEOUT) == b"next"


def test_partial_frame_survives_many_timeouts(raw_to_conn):
    raw, conn = raw_to_conn()
    payload = bytes(range(256)) * 400  # 102400 bytes
    wire = encode(payload)
    raw.sendall(wire[:50_000])
    for _ in range(3):
        with pytest.raises(sk.Timeout):
            conn.recv(timeout=0.05)
    assert conn.buffered == 50_000
    raw.sendall(wire[50_000:])
    assert conn.recv(timeout=STEP_TIMEOUT) == payload


# ----------------------------------------------------------------- bounds


@pytest.mark.parametrize("op", ["recv", "recv_many", "request"])
def test_receive_timeout_bounds(conn_pair, op):
    cli, srv = conn_pair()
    with Elapsed() as e, pytest.raises(sk.Timeout) as ei:
        if op == "recv":
            cli.recv(timeout=0.2)
        elif op == "recv_many":
            cli.recv_many(timeout=0.2)
        else:
            cli.request(b"ping", timeout=0.2)
    assert_is_timeout(ei.value)
    assert_timeout_bounds(e.seconds, 0.2)
    # the connection stays usable
    if op == "request":
        assert srv.recv(timeout=STEP_TIMEOUT) == b"ping"
        srv.send(b"late pong")  # owed to the timed-out request: dropped
    srv.send(b"hello")
    assert cli.recv(timeout=STEP_TIMEOUT) == b"hello"


def test_accept_timeout(listener):
    srv = listener()
    with Elapsed() as e, pytest.raises(sk.Timeout) as ei:
        srv.accept(timeout=0.2)
    assert_is_timeout(ei.value)
    assert_timeout_bounds(e.seconds, 0.2)
    # the listener stays usable
    with sk.connect(srv.address, timeout=STEP_TIMEOUT) as cli, srv.accept(timeout=STEP_TIMEOUT) as peer:
        cli.send(b"x")
        assert peer.recv(timeout=STEP_TIMEOUT) == b"x"


def _full_backlog_listener(closer):
    """A listener with backlog 0 whose accept queue is full (one connected,
    never accepted client), so the next SYN is dropped and a connect to it
    stays in SYN_SENT (see shared/STATES.md)."""
    srv = closer.add(sk.listen(("127.0.0.1", 0), backlog=0))
    filler = closer.add(socket.create_connection(srv.address, timeout=STEP_TIMEOUT))
    return srv, filler


def test_connect_timeout_to_full_backlog(closer):
    srv, _ = _full_backlog_listener(closer)
    with Elapsed() as e:
        try:
            c = sk.connect(srv.address, timeout=0.3)
        except sk.Timeout as exc:
            assert_is_timeout(exc)
        else:
            c.close()
            pytest.skip("this kernel completed a connect to a full accept queue")
    assert_timeout_bounds(e.seconds, 0.3)


def test_call_timeout_to_full_backlog(closer):
    srv, _ = _full_backlog_listener(closer)
    with Elapsed() as e:
        try:
            sk.call(srv.address, b"x", timeout=0.3)
        except sk.Timeout as exc:
            assert_is_timeout(exc)
        else:
            pytest.skip("this kernel completed a connect to a full accept queue")
    assert_timeout_bounds(e.seconds, 0.3)


# -------------------------------------------------------------- timeout 0


def test_timeout_zero_does_not_wait(conn_pair, listener):
    cli, srv = conn_pair()
    with Elapsed() as e, pytest.raises(sk.Timeout):
        cli.recv(timeout=0)
    assert e.seconds < NO_WAIT
    with Elapsed() as e, pytest.raises(sk.Timeout):
        cli.recv_many(timeout=0)
    assert e.seconds < NO_WAIT
    # a frame already in the kernel's queue is taken with timeout=0
    srv.send(b"ready")
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            assert cli.recv(timeout=0) == b"ready"
            break
        except sk.Timeout:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    # a small send to a reading peer succeeds with timeout=0
    cli.send(b"quick", timeout=0)
    assert srv.recv(timeout=STEP_TIMEOUT) == b"quick"
    lst = listener()
    with Elapsed() as e, pytest.raises(sk.Timeout):
        lst.accept(timeout=0)
    assert e.seconds < NO_WAIT
    with sk.connect(lst.address, timeout=STEP_TIMEOUT) as c2:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                peer = lst.accept(timeout=0)
                break
            except sk.Timeout:
                assert time.monotonic() < deadline
                time.sleep(0.001)
        peer.close()


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_bad_timeout_values(conn_pair, listener, bad):
    cli, _ = conn_pair()
    for call in (
        lambda: cli.recv(timeout=bad),
        lambda: cli.recv_many(timeout=bad),
        lambda: cli.send(b"x", timeout=bad),
        lambda: cli.send_many([b"x"], timeout=bad),
        lambda: cli.request(b"x", timeout=bad),
        lambda: cli.flush(timeout=bad),
        lambda: listener().accept(timeout=bad),
    ):
        with pytest.raises(ValueError):
            call()


# ------------------------------------------------------------------ send


def _frames(n: int, size: int) -> list[bytes]:
    """n distinct frames of `size` bytes: a rotated byte ramp tagged with i."""
    ramp = bytes(range(256)) * (size // 256 + 1)
    return [b"%08d" % i + ramp[i + 1 : i + 1 + size - 8] for i in range(n)]


def _read_frames(raw: socket.socket, n: int) -> list[bytes]:
    return [recv_frame(raw, timeout=STEP_TIMEOUT) for _ in range(n)]


MIB8 = 8 << 20


def test_send_many_timeout_then_flush_and_resend(conn_to_raw):
    conn, raw = conn_to_raw(rcvbuf=4096)
    frames = _frames(3, MIB8)
    with Elapsed() as e, pytest.raises(sk.Timeout) as ei:
        conn.send_many(frames, timeout=0.3)
    assert_is_timeout(ei.value)
    assert_timeout_bounds(e.seconds, 0.3)
    sent = ei.value.sent
    # the kernel's buffers hold far less than 8 MiB: the first frame was
    # begun and not finished, and the kernel has exactly the rest
    assert sent == 1, f"sent={sent}"
    assert conn.unsent == len(encode(frames[0])) - _taken_by_kernel(conn, raw)
    # still stuck: a flush times out too and keeps the rest
    before = conn.unsent
    with pytest.raises(sk.Timeout):
        conn.flush(timeout=0.1)
    assert 0 < conn.unsent <= before
    # the peer starts reading: flush completes the torn frame, then the rest
    reader = start_thread(_read_frames, raw, len(frames), name="reader")
    conn.flush(timeout=STEP_TIMEOUT)
    assert conn.unsent == 0
    assert conn.send_many(frames[sent:], timeout=STEP_TIMEOUT) == len(frames) - sent
    got = reader.join_result()
    assert len(got) == len(frames)
    for i, (g, f) in enumerate(zip(got, frames)):
        assert g == f, f"frame {i} corrupted"


def test_send_timeout_then_next_send_completes_torn_frame(conn_to_raw):
    conn, raw = conn_to_raw(rcvbuf=4096)
    frames = _frames(2, MIB8)
    with Elapsed() as e, pytest.raises(sk.Timeout) as ei:
        conn.send(frames[0], timeout=0.2)
    assert_is_timeout(ei.value)
    assert_timeout_bounds(e.seconds, 0.2)
    assert conn.unsent > 0
    reader = start_thread(_read_frames, raw, 2, name="reader")
    conn.send(frames[1], timeout=STEP_TIMEOUT)  # sends the kept tail first
    assert conn.unsent == 0
    got = reader.join_result()
    assert got[0] == frames[0]
    assert got[1] == frames[1]


def _taken_by_kernel(conn: sk.Connection, raw: socket.socket) -> int:
    """Bytes conn has handed to the kernel while raw reads nothing: those in
    conn's send queue plus those in raw's receive queue (SIOCOUTQ, SIOCINQ)."""
    (raw_in, _), (_, conn_out) = settled_queues([raw.fileno(), conn.fileno()])
    return raw_in + conn_out


def test_send_timeout_reports_sent(conn_to_raw):
    """send() is a batch of one: its Timeout says whether the frame was
    taken (1: begun, its tail kept) or not (0), like send_many().  Into an
    empty pipe an 8 MiB frame is always begun and never finished: the
    kernel holds its head, conn.unsent is exactly the rest."""
    conn, raw = conn_to_raw(rcvbuf=4096)
    frame = _frames(1, MIB8)[0]
    with pytest.raises(sk.Timeout) as ei:
        conn.send(frame, timeout=0.2)
    assert ei.value.sent == 1
    taken = _taken_by_kernel(conn, raw)
    assert 0 < taken < len(frame)
    assert conn.unsent == len(encode(frame)) - taken
    reader = start_thread(_read_frames, raw, 1, name="reader")
    conn.flush(timeout=STEP_TIMEOUT)
    assert reader.join_result() == [frame]


def test_send_timeout_before_anything_is_taken(conn_to_raw):
    """With the pipe already full, a new send_many times out having taken
    nothing: sent == 0 and those frames never appear on the wire."""
    conn, raw = conn_to_raw(rcvbuf=4096)
    first = _frames(1, MIB8)[0]
    with pytest.raises(sk.Timeout):
        conn.send(first, timeout=0.2)
    assert conn.unsent > 0
    with pytest.raises(sk.Timeout) as ei:
        conn.send_many([b"never"] * 3, timeout=0.1)
    assert ei.value.sent == 0
    # it pushed more of the first frame's tail, and not a byte of the others
    assert _taken_by_kernel(conn, raw) + conn.unsent == len(encode(first))
    reader = start_thread(_read_frames, raw, 2, name="reader")
    conn.flush(timeout=STEP_TIMEOUT)
    conn.send(b"after", timeout=STEP_TIMEOUT)
    assert reader.join_result() == [first, b"after"]


# ------------------------------------------------------------------ locks


def test_timeout_while_another_thread_holds_the_receive_side(conn_pair):
    cli, srv = conn_pair()
    blocked = start_thread(cli.recv, STEP_TIMEOUT, name="blocked-recv")
    wait_blocked_on_socket(blocked)  # it holds the receive lock
    with Elapsed() as e, pytest.raises(sk.Timeout) as ei:
        cli.recv(timeout=0.2)
    assert_is_timeout(ei.value)
    assert_timeout_bounds(e.seconds, 0.2)
    srv.send(b"for-the-first")
    assert blocked.join_result() == b"for-the-first"
