"""Write-behind sends (issue 13 item 5, docs/PROTOCOL.md "Write-behind").

With ``sk.connect(..., write_behind=True)`` (or ``conn.write_behind =
True``), ``send`` queues small frames and writes them in batches.  These
tests hold the rule's guarantees on real loopback sockets: the bytes on the
wire are the frames, whole and in order; the queue goes out on flush(),
recv(), recv_many(), request(), send_many(), close() and when it reaches
64 KiB, and by the flusher thread when the sender goes quiet; a send
that times out takes nothing and tears nothing; abort()
discards the queue; close() towards a peer that reads nothing gives up
after a bounded wait and says so.  Ctrl-C in a write-behind send is in
tests/test_signals.py.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Iterator

import pytest

import pysockkit as sk
from helpers import decode_stream, recv_all, scaled, start_thread, wait_until

WB_SIZE = 64 * 1024  # the queue's size bound (SKPY_WB_SIZE)
# frames that fill the buffers: large ones, so that the receiver's kernel
# gains little room by collapsing its queue while the test waits
FILL = 16_000


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    """(write-behind client connection, its accepted pysockkit peer)."""
    with sk.listen(("127.0.0.1", 0)) as ls:
        client = sk.connect(ls.address, timeout=scaled(10), write_behind=True)
        peer = ls.accept(timeout=scaled(10))
    yield client, peer
    client.close()
    peer.close()


@pytest.fixture
def raw_pair() -> Iterator[tuple[Any, socket.socket]]:
    """(write-behind client with a 64 KiB send buffer, a stdlib socket peer
    with a 64 KiB receive buffer that reads nothing until the test does)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(scaled(10))
    client = sk.connect(ls.getsockname(), timeout=scaled(10), write_behind=True)
    # a fixed send buffer too (no autotuning): once both buffers are full,
    # nothing moves until the peer reads
    dup = socket.socket(fileno=os.dup(client.fileno()))
    dup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    dup.close()
    raw, _ = ls.accept()
    ls.close()
    raw.settimeout(scaled(20))
    yield client, raw
    client.close()
    raw.close()


def payloads(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def fill_until_timeout(conn: Any, size: int, limit: int = 200_000) -> tuple[list[bytes], Any]:
    """Send distinct frames of ``size`` bytes with a short timeout until one
    times out (the peer reads nothing); returns the frames whose send
    returned and the Timeout."""
    sent: list[bytes] = []
    for i in range(limit):
        p = i.to_bytes(4, "big") * (size // 4)
        try:
            conn.send(p, timeout=0.2)
        except sk.Timeout as exc:
            return sent, exc
        sent.append(p)
    raise AssertionError(f"{limit} sends of {size} bytes to a peer that reads nothing all returned")


def stuck_queue(client: Any) -> list[bytes]:
    """Fill the write-behind queue of ``client`` (whose peer reads nothing)
    until it cannot drain into the kernel; returns the frames sent.

    A peer that reads nothing still takes bytes for a while on loopback:
    the kernel collapses its receive queue into fewer buffers and opens the
    window again (measured: a queue of 46 KB drained in 0.3 s; a close given
    1 s, and once a recv given 0.2 s, found the queue written).  So fill
    until the peer advertises a zero window with nothing in flight - from
    then on no byte moves until it reads (its window opens only when data
    arrives or the application reads, and zero-window probes carry no data)
    - and check that a flush cannot empty the queue either."""
    sent: list[bytes] = []

    def window_closed() -> bool:
        info = sk.tcp_info(client)
        return info.snd_wnd_bytes == 0 and info.unacked_segs == 0

    for _ in range(20):
        sent += fill_until_timeout(client, FILL)[0]
        assert wait_until(window_closed, timeout=scaled(30), interval=0.02), sk.tcp_info(client)
        try:
            client.flush(timeout=scaled(0.5))
        except sk.Timeout:
            return sent
    raise AssertionError("the queue always drained into a peer that reads nothing")


def test_the_option_is_off_by_default_and_can_be_switched(pair) -> None:
    client, peer = pair
    assert client.write_behind is True
    with sk.listen(("127.0.0.1", 0)) as ls:
        with sk.connect(ls.address, timeout=scaled(10)) as plain:
            assert plain.write_behind is False
            ls.accept(timeout=scaled(10)).close()
    client.send(b"queued")
    client.write_behind = False  # turning it off writes the queue first
    assert client.unsent == 0 and client.write_behind is False
    assert peer.recv(timeout=scaled(10)) == b"queued"
    client.send(b"direct")  # written at once now
    assert client.unsent == 0
    assert peer.recv(timeout=scaled(10)) == b"direct"


def test_a_sender_that_goes_quiet_has_its_queue_written_by_the_flusher(pair) -> None:
    client, peer = pair
    client.send(b"one")
    client.send(b"two")
    # no further call on the client: the flusher thread writes the queue
    assert peer.recv(timeout=scaled(10)) == b"one"
    assert peer.recv(timeout=scaled(10)) == b"two"
    assert wait_until(lambda: client.unsent == 0, timeout=scaled(10))


def test_flush_writes_the_queue(pair) -> None:
    client, peer = pair
    for p in payloads(500):
        client.send(p)
    client.flush(timeout=scaled(10))
    assert client.unsent == 0
    assert [peer.recv(timeout=scaled(10)) for _ in range(500)] == payloads(500)


def test_frames_arrive_whole_and_in_order(pair) -> None:
    client, peer = pair
    want = payloads(5000, 60) + [b"x" * 70_000] + payloads(100, 8)
    got: list[bytes] = []
    reader = start_thread(lambda: [got.append(peer.recv(timeout=scaled(20)))
                                   for _ in range(len(want))])
    for p in want:
        client.send(p, timeout=scaled(20))
    client.flush(timeout=scaled(20))
    reader.join_result(timeout=scaled(30))
    assert got == want


def test_the_queue_never_exceeds_its_size_bound(pair) -> None:
    client, peer = pair
    reader = start_thread(lambda: [peer.recv(timeout=scaled(20)) for _ in range(20_000)])
    most = 0
    for p in payloads(20_000, 200):
        client.send(p, timeout=scaled(20))
        most = max(most, client.unsent)
    client.flush(timeout=scaled(20))
    reader.join_result(timeout=scaled(30))
    assert 0 < most <= WB_SIZE


def test_recv_writes_the_queue_first(pair) -> None:
    client, peer = pair
    echo = start_thread(lambda: [peer.send(peer.recv(timeout=scaled(10))) for _ in range(3)])
    for p in (b"a", b"b", b"c"):
        client.send(p)
    # without the flush in recv this would wait for frames never written
    assert client.recv(timeout=scaled(10)) == b"a"
    assert client.recv_many(max_frames=2, timeout=scaled(10))[0] == b"b"
    echo.join_result()


def test_request_writes_the_queue_first_and_in_order(pair) -> None:
    client, peer = pair

    def answer() -> list[bytes]:
        seen = [peer.recv(timeout=scaled(10)) for _ in range(3)]
        peer.send(b"reply to " + seen[-1])
        return seen

    t = start_thread(answer)
    client.send(b"first")
    client.send(b"second")
    assert client.request(b"third", timeout=scaled(10)) == b"reply to third"
    assert t.join_result() == [b"first", b"second", b"third"]
    assert client.unsent == 0


def test_send_many_and_correlated_frames_keep_their_place() -> None:
    fr = sk.Framing(correlation=True)
    with sk.listen(("127.0.0.1", 0), framing=fr) as ls:
        with sk.connect(ls.address, timeout=scaled(10), framing=fr, write_behind=True) as c, \
                ls.accept(timeout=scaled(10)) as peer:
            c.send(b"plain")
            c.send(b"with id", id=7)
            assert c.send_many([b"m1", (9, b"m2")]) == 2
            assert c.unsent == 0  # send_many wrote the queue, then its frames
            got = [peer.recv(timeout=scaled(10)) for _ in range(4)]
    assert got == [b"plain", (7, b"with id"), b"m1", (9, b"m2")]


def test_close_writes_the_queue_then_fin(pair) -> None:
    client, peer = pair
    for p in payloads(300):
        client.send(p)
    client.close()
    assert [peer.recv(timeout=scaled(10)) for _ in range(300)] == payloads(300)
    with pytest.raises(sk.ConnectionClosed):
        peer.recv(timeout=scaled(10))


def test_abort_discards_the_queue(raw_pair) -> None:
    client, raw = raw_pair
    sent, _ = fill_until_timeout(client, FILL)
    assert client.unsent > 0
    client.abort()  # RST: the queue and what the kernel holds are dropped
    data = b""
    with pytest.raises(ConnectionResetError):
        for _ in range(100_000):
            chunk = raw.recv(1 << 20)
            assert chunk, "an orderly end after abort()"
            data += chunk
    frames, _, _ = decode_stream(data, 4, "big", 2**32 - 1)
    assert frames == sent[:len(frames)] and len(frames) < len(sent)


def test_a_send_that_times_out_takes_nothing_and_tears_nothing(raw_pair) -> None:
    client, raw = raw_pair
    sent, exc = fill_until_timeout(client, FILL)
    # the frame of the send that timed out was not queued: nothing of it
    # goes out, and the queue before it stays whole and in order
    assert exc.sent == 0
    assert 0 < client.unsent <= WB_SIZE
    reader = start_thread(recv_all, raw, scaled(30))
    client.flush(timeout=scaled(30))
    client.send(b"after", timeout=scaled(10))
    client.close()
    frames, outcome, detail = decode_stream(reader.join_result(timeout=scaled(40)), 4, "big",
                                            2**32 - 1)
    assert (outcome, detail) == ("closed", 0)
    assert frames == sent + [b"after"]


def test_recv_that_cannot_write_the_queue_times_out_and_keeps_it(raw_pair) -> None:
    client, raw = raw_pair
    sent = stuck_queue(client)
    queued = client.unsent
    with pytest.raises(sk.Timeout, match="write_behind"):
        client.recv(timeout=0.2)
    assert 0 < client.unsent <= queued  # kept (the kernel may take a little)
    reader = start_thread(recv_all, raw, scaled(30))
    client.close()  # the peer reads now: close writes the rest
    frames, outcome, _ = decode_stream(reader.join_result(timeout=scaled(40)), 4, "big",
                                       2**32 - 1)
    assert outcome == "closed" and frames == sent


def test_close_gives_up_on_a_peer_that_reads_nothing_and_says_so(raw_pair) -> None:
    client, raw = raw_pair
    stuck_queue(client)
    assert client.unsent > 0
    with pytest.raises(sk.Timeout, match="discarded"):
        client.close()
    assert client.closed


def test_threads_sending_concurrently_never_interleave(pair) -> None:
    client, peer = pair
    n, per = 4, 2000
    barrier = threading.Barrier(n)

    def sender(k: int) -> None:
        barrier.wait(timeout=scaled(10))
        for i in range(per):
            client.send(k.to_bytes(1, "big") + i.to_bytes(4, "big") * 10, timeout=scaled(20))

    reader = start_thread(lambda: [peer.recv(timeout=scaled(20)) for _ in range(n * per)])
    threads = [start_thread(sender, k) for k in range(n)]
    for t in threads:
        t.join_result(timeout=scaled(30))
    client.flush(timeout=scaled(20))
    got = reader.join_result(timeout=scaled(30))
    for k in range(n):
        mine = [g for g in got if g[0] == k]
        assert mine == [k.to_bytes(1, "big") + i.to_bytes(4, "big") * 10 for i in range(per)]
