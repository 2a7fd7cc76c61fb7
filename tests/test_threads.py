"""Several threads on one Connection: frames never interleave, and one
thread may send while another receives."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pytest

import pysockkit as sk
from helpers import STEP_TIMEOUT, recv_frame, scaled, start_thread, wait_blocked_on_socket, wait_until

_TAG = struct.Struct(">BI")  # thread id, sequence number


def make_frame(tid: int, seq: int, size: int) -> bytes:
    """A frame whose every byte says who sent it: a tag, then a filler byte
    derived from (tid, seq).  A torn or interleaved frame cannot pass
    check_frame."""
    return _TAG.pack(tid, seq) + bytes([(tid * 31 + seq) & 0xFF]) * size


def check_frame(frame: bytes) -> tuple[int, int]:
    tid, seq = _TAG.unpack_from(frame)
    filler = frame[_TAG.size :]
    fill = (tid * 31 + seq) & 0xFF
    assert filler.count(fill) == len(filler), (
        f"frame of thread {tid} seq {seq} is corrupted (len {len(frame)})"
    )
    return tid, seq


def _sizes(rng: random.Random, n: int) -> list[int]:
    # coalesced small frames, iovec medium ones, and some over the 64 KiB
    # inline-send limit (sent without the GIL)
    choices = [0, 1, 100, 1000, 1025, 5000, 40_000, 70_000, 300_000]
    return [rng.choice(choices) for _ in range(n)]


def _sender(conn: sk.Connection, tid: int, n: int, seed: int) -> int:
    rng = random.Random(seed)
    sizes = _sizes(rng, n)
    seq = 0
    while seq < n:
        if rng.random() < 0.5:
            conn.send(make_frame(tid, seq, sizes[seq]), timeout=STEP_TIMEOUT)
            seq += 1
        else:
            k = min(n - seq, rng.randint(1, 20))
            batch = [make_frame(tid, seq + i, sizes[seq + i]) for i in range(k)]
            assert conn.send_many(batch, timeout=STEP_TIMEOUT) == k
            seq += k
    return seq


@pytest.mark.parametrize("nthreads", [2, 4])
def test_concurrent_senders_never_interleave(conn_pair, nthreads):
    cli, srv = conn_pair()
    per_thread = 400
    senders = [
        start_thread(_sender, cli, tid, per_thread, 100 * nthreads + tid, name=f"sender{tid}")
        for tid in range(nthreads)
    ]
    next_seq = [0] * nthreads
    total = nthreads * per_thread
    got = 0
    calls = 0
    while got < total:
        calls += 1
        assert calls <= total, "recv_many returned nothing"
        for frame in srv.recv_many(timeout=STEP_TIMEOUT):
            tid, seq = check_frame(frame)
            assert 0 <= tid < nthreads
            assert seq == next_seq[tid], f"thread {tid}: got seq {seq}, expected {next_seq[tid]}"
            next_seq[tid] += 1
            got += 1
    for s in senders:
        assert s.join_result() == per_thread
    assert next_seq == [per_thread] * nthreads
    with pytest.raises(sk.Timeout):
        srv.recv(timeout=0.05)


def test_send_and_recv_at_once_on_one_connection(conn_pair):
    """Full duplex with big frames: the client's sender blocks on a full
    window while its receiver must keep draining the echoes.  If send and
    receive shared one lock this would deadlock (and time out)."""
    cli, srv = conn_pair()
    n, size = 60, 256 * 1024  # 15 MiB each way

    def echo() -> int:
        k = 0
        for m in srv:
            srv.send(m, timeout=STEP_TIMEOUT)
            k += 1
        return k

    def receiver() -> int:
        for seq in range(n):
            frame = cli.recv(timeout=STEP_TIMEOUT)
            assert check_frame(frame) == (7, seq)
            assert len(frame) == _TAG.size + size
        return n

    e = start_thread(echo, name="echo")
    r = start_thread(receiver, name="receiver")
    for seq in range(n):
        cli.send(make_frame(7, seq, size), timeout=STEP_TIMEOUT)
    assert r.join_result() == n
    cli.shutdown("write")
    assert e.join_result() == n


def test_two_receivers_share_the_frames(conn_pair):
    cli, srv = conn_pair()
    n = 2000
    stop = b"STOP"
    lock = threading.Lock()
    seen: list[int] = []

    def receiver() -> int:
        mine = 0
        while True:
            frame = srv.recv(timeout=STEP_TIMEOUT)
            if frame == stop:
                return mine
            tid, seq = check_frame(frame)
            with lock:
                seen.append(seq)
            mine += 1

    rs = [start_thread(receiver, name=f"recv{i}") for i in range(2)]
    cli.send_many([make_frame(1, i, i % 50) for i in range(n)])
    cli.send_many([stop, stop])
    counts = [r.join_result() for r in rs]
    assert sum(counts) == n
    assert sorted(seen) == list(range(n))


def test_sender_thread_and_main_thread_receiving_other_direction(conn_pair):
    cli, srv = conn_pair()
    n = 500

    def pump() -> int:
        return _sender(cli, 3, n, 42)

    p = start_thread(pump, name="pump")
    # meanwhile the main thread receives on the same connection
    srv_sends = start_thread(
        lambda: srv.send_many([make_frame(9, i, 10) for i in range(n)], timeout=STEP_TIMEOUT),
        name="srv-send",
    )
    for i in range(n):
        assert check_frame(cli.recv(timeout=STEP_TIMEOUT)) == (9, i)
    for i in range(n):
        assert check_frame(srv.recv(timeout=STEP_TIMEOUT)) == (3, i)
    assert p.join_result() == n
    assert srv_sends.join_result() == n


def test_threads_with_send_timeouts_keep_the_stream_intact(conn_to_raw):
    """Two threads send big frames with short timeouts into a slow reader.
    A torn frame's tail is completed by whichever thread sends next, so the
    reader must see every frame exactly once, whole, and each thread's
    frames in order.  A thread resends a frame only when its Timeout says
    the frame was not taken (exc.sent == 0)."""
    conn, raw = conn_to_raw(rcvbuf=4096)
    per_thread, size = 4, 2 << 20
    timeouts = [0, 0]
    torn = [0, 0]

    def sender(tid: int) -> int:
        for seq in range(per_thread):
            frame = make_frame(tid, seq, size)
            for _attempt in range(1000):
                try:
                    conn.send(frame, timeout=0.03)
                    break
                except sk.Timeout as exc:
                    timeouts[tid] += 1
                    # taken: its tail goes out with the next send/flush.
                    # (A Timeout waiting for the send lock sent nothing; it
                    # is checked for .sent in the next test.)
                    if getattr(exc, "sent", 0) == 1:
                        torn[tid] += 1
                        break
            else:
                raise AssertionError("frame never taken")
        return per_thread

    def slow_reader() -> list[bytes]:
        frames = []
        buf = bytearray()
        want = 2 * per_thread
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(frames) < want:
            assert time.monotonic() < deadline, f"only {len(frames)} frames arrived"
            raw.settimeout(0.2)
            try:
                chunk = raw.recv(256 * 1024)
            except socket.timeout:
                continue
            assert chunk, "EOF"
            buf += chunk
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + n:
                    break
                frames.append(bytes(buf[4 : 4 + n]))
                del buf[: 4 + n]
        return frames

    senders = [start_thread(sender, tid, name=f"sender{tid}") for tid in range(2)]
    # the pipe fills and the timeouts start: a frame is torn before anyone reads
    assert wait_until(lambda: sum(torn) > 0, timeout=STEP_TIMEOUT), timeouts
    reader = start_thread(slow_reader, name="slow-reader")
    for s in senders:
        assert s.join_result(timeout=STEP_TIMEOUT) == per_thread
    conn.flush(timeout=STEP_TIMEOUT)  # the last torn tail, if any
    assert conn.unsent == 0
    frames = reader.join_result()
    assert sum(timeouts) > 0, "the test never hit a send timeout"
    assert sum(torn) > 0, "no frame was torn by a timeout"
    seen = {0: [], 1: []}
    for f in frames:
        assert len(f) == _TAG.size + size
        tid, seq = check_frame(f)
        seen[tid].append(seq)
    assert seen == {0: list(range(per_thread)), 1: list(range(per_thread))}


@pytest.mark.parametrize("op", ["send", "send_many"])
def test_timeout_waiting_for_the_send_lock_reports_nothing_sent(conn_to_raw, op):
    """While one thread is stuck in a send, another thread's send times out
    waiting for the connection: its Timeout says sent == 0, like any other
    send timeout, and its frame never goes out."""
    conn, raw = conn_to_raw(rcvbuf=4096)
    big = make_frame(1, 0, 8 << 20)
    stuck = start_thread(conn.send, big, scaled(1.0), name="stuck-sender")
    wait_blocked_on_socket(stuck)  # it holds the send lock, waiting for room
    assert stuck.is_alive()
    with pytest.raises(sk.Timeout) as ei:
        if op == "send":
            conn.send(b"blocked", timeout=0.1)
        else:
            conn.send_many([b"blocked"], timeout=0.1)
    assert getattr(ei.value, "sent", None) == 0
    with pytest.raises(sk.Timeout):
        stuck.join_result()
    reader = start_thread(recv_frame_std, raw, name="reader")
    conn.flush(timeout=STEP_TIMEOUT)
    assert reader.join_result() == big


def recv_frame_std(raw: socket.socket) -> bytes:
    frame = recv_frame(raw)
    raw.settimeout(0.1)
    try:
        extra = raw.recv(100)
    except socket.timeout:
        return frame
    raise AssertionError(f"unexpected bytes after the frame: {extra!r}")
