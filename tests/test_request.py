"""request()/reply, late replies, and sk.call short connections."""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import subprocess
import threading
import time

import pytest

import pysockkit as sk
from helpers import STEP_TIMEOUT, recv_exact, recv_frame, scaled, start_thread


def _echo(conn: sk.Connection, prefix: bytes = b"") -> int:
    """Answer every frame with prefix + frame until the peer closes."""
    n = 0
    for msg in conn:
        conn.send(prefix + msg, timeout=STEP_TIMEOUT)
        n += 1
    return n


def test_request_reply_against_echo_thread(conn_pair):
    cli, srv = conn_pair()
    echo = start_thread(_echo, srv, b"re:", name="echo")
    payloads = [b"", b"a", b"hello", bytes(range(256)) * 10, b"\x00" * (1 << 20)]
    for p in payloads:
        assert cli.request(p, timeout=STEP_TIMEOUT) == b"re:" + p
    assert cli.pending_replies == 0
    assert cli.late_replies_dropped == 0
    cli.shutdown("write")
    assert echo.join_result() == len(payloads)


def _delaying_server(conn: sk.Connection, delays: dict[bytes, float]) -> list[bytes]:
    """Reply b"reply:" + request, after delays.get(request, 0) seconds."""
    seen = []
    for msg in conn:
        seen.append(msg)
        time.sleep(delays.get(msg, 0.0))
        conn.send(b"reply:" + msg, timeout=STEP_TIMEOUT)
    return seen


def test_late_reply_is_dropped_and_next_request_gets_its_own(conn_pair):
    cli, srv = conn_pair()
    server = start_thread(_delaying_server, srv, {b"one": 0.4}, name="slow-server")
    t0 = time.monotonic()
    with pytest.raises(sk.Timeout):
        cli.request(b"one", timeout=0.15)
    assert 0.14 <= time.monotonic() - t0 < 1.0
    assert cli.pending_replies == 1
    assert cli.late_replies_dropped == 0
    # sent while the late reply is still on its way: must get its own reply
    assert cli.request(b"two", timeout=STEP_TIMEOUT) == b"reply:two"
    assert cli.pending_replies == 0
    assert cli.late_replies_dropped == 1
    assert cli.request(b"three", timeout=STEP_TIMEOUT) == b"reply:three"
    assert cli.late_replies_dropped == 1
    cli.shutdown("write")
    assert server.join_result() == [b"one", b"two", b"three"]


def test_late_reply_already_buffered_is_dropped(conn_pair):
    cli, srv = conn_pair()
    server = start_thread(_delaying_server, srv, {b"one": 0.25}, name="slow-server")
    with pytest.raises(sk.Timeout):
        cli.request(b"one", timeout=0.1)
    time.sleep(0.4)  # the late reply has now arrived and sits in the kernel queue
    assert cli.request(b"two", timeout=STEP_TIMEOUT) == b"reply:two"
    assert cli.late_replies_dropped == 1
    assert cli.pending_replies == 0
    cli.shutdown("write")
    server.join_result()


def test_late_reply_is_not_returned_by_recv(conn_pair):
    cli, srv = conn_pair()
    with pytest.raises(sk.Timeout):
        cli.request(b"q", timeout=0.1)
    assert srv.recv(timeout=STEP_TIMEOUT) == b"q"
    srv.send(b"late answer")
    srv.send(b"unsolicited")
    assert cli.recv(timeout=STEP_TIMEOUT) == b"unsolicited"
    assert cli.late_replies_dropped == 1
    assert cli.pending_replies == 0


def test_several_late_replies(conn_pair):
    cli, srv = conn_pair()
    for i in range(3):
        with pytest.raises(sk.Timeout):
            cli.request(b"q%d" % i, timeout=0.05)
    assert cli.pending_replies == 3
    for i in range(3):
        assert srv.recv(timeout=STEP_TIMEOUT) == b"q%d" % i
        srv.send(b"late%d" % i)
    srv.send(b"fresh")
    assert cli.recv_many(timeout=STEP_TIMEOUT) == [b"fresh"]
    assert cli.late_replies_dropped == 3
    assert cli.pending_replies == 0


def test_concurrent_requests_are_serialised(conn_pair):
    cli, srv = conn_pair()
    echo = start_thread(_echo, srv, b"", name="echo")
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(100):
            msg = b"t%d-%d-" % (k, i) + bytes([k]) * (i * 37 % 3000)
            reply = cli.request(msg, timeout=STEP_TIMEOUT)
            if reply != msg:
                errors.append(f"thread {k} request {i} got someone else's reply")

    workers = [start_thread(worker, k, name=f"req{k}") for k in range(4)]
    for w in workers:
        w.join_result()
    assert errors == []
    cli.shutdown("write")
    assert echo.join_result() == 400


# ------------------------------------------------------------------- call


class ShortServer:
    """Accepts short connections in a thread: one request, one reply, then
    waits for the client's FIN before closing (so the client closes first),
    recording each client's port."""

    def __init__(self, framing=None, reply_prefix: bytes = b"ok:"):
        self.lst = sk.listen(("127.0.0.1", 0), framing=framing)
        self.address = self.lst.address
        self.prefix = reply_prefix
        self.client_ports: list[int] = []
        self.stop = threading.Event()
        self.thread = start_thread(self._run, name="short-server")

    def _run(self) -> int:
        served = 0
        while not self.stop.is_set():
            try:
                conn = self.lst.accept(timeout=0.05)
            except sk.Timeout:
                continue
            with conn:
                self.client_ports.append(conn.remote_address[1])
                msg = conn.recv(timeout=STEP_TIMEOUT)
                conn.send(self.prefix + msg, timeout=STEP_TIMEOUT)
                with pytest.raises(sk.ConnectionClosed):
                    conn.recv(timeout=STEP_TIMEOUT)
            served += 1
        return served

    def close(self) -> int:
        self.stop.set()
        try:
            return self.thread.join_result()
        finally:
            self.lst.close()


@pytest.fixture
def short_server():
    servers = []

    def make(**kw):
        s = ShortServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_call_many_short_connections(short_server):
    server = short_server()
    t0 = time.monotonic()
    for i in range(200):
        assert sk.call(server.address, b"%d" % i, timeout=STEP_TIMEOUT) == b"ok:%d" % i
    elapsed = time.monotonic() - t0
    assert server.close() == 200
    assert len(set(server.client_ports)) == 200
    assert elapsed < 20


def test_call_with_framing(short_server):
    f = sk.Framing(header_size=2, byteorder="little")
    server = short_server(framing=f)
    assert sk.call(server.address, b"x" * 1000, timeout=STEP_TIMEOUT, framing=f) == b"ok:" + b"x" * 1000


def _time_wait_lines() -> list[str]:
    out = subprocess.run(
        ["ss", "-tanH", "state", "time-wait"],
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=True,
    ).stdout
    return out.splitlines()


def test_time_wait_lands_on_the_client(short_server):
    server = short_server()
    for i in range(3):
        assert sk.call(server.address, b"tw%d" % i, timeout=STEP_TIMEOUT) == b"ok:tw%d" % i
    server.close()
    if shutil.which("ss") is None:
        pytest.skip("iproute2 ss is not installed")
    sport = server.address[1]
    lines = _time_wait_lines()
    # columns: Recv-Q Send-Q Local:Port Peer:Port [Process] (no State
    # column when a single state is asked for)
    pairs = set()
    for line in lines:
        cols = line.split()
        if len(cols) >= 4:
            pairs.add((cols[2], cols[3]))
    for cport in server.client_ports:
        client_side = (f"127.0.0.1:{cport}", f"127.0.0.1:{sport}")
        server_side = (f"127.0.0.1:{sport}", f"127.0.0.1:{cport}")
        assert client_side in pairs, f"client port {cport} is not in TIME_WAIT: {lines[:5]}"
        assert server_side not in pairs, "the server side went to TIME_WAIT"


def test_call_to_closed_port_is_refused():
    # a bound socket that does not listen answers SYN with RST, and holding
    # it keeps the port from being reused by anyone else meanwhile
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = s.getsockname()
        with pytest.raises(sk.Error) as ei:
            sk.call(addr, b"hello", timeout=STEP_TIMEOUT)
        assert ei.value.errno == errno.ECONNREFUSED
        assert not isinstance(ei.value, sk.Timeout)
        with pytest.raises(sk.Error) as ei2:
            sk.connect(addr, timeout=STEP_TIMEOUT)
        assert ei2.value.errno == errno.ECONNREFUSED


def test_call_timeout_bounds_the_whole_exchange(closer):
    lst = closer.add(sk.listen(("127.0.0.1", 0)))
    holder: list[sk.Connection] = []

    def silent() -> None:
        conn = lst.accept(timeout=STEP_TIMEOUT)
        holder.append(conn)
        conn.recv(timeout=STEP_TIMEOUT)  # read the request, never answer

    t = start_thread(silent, name="silent")
    t0 = time.monotonic()
    with pytest.raises(sk.Timeout):
        sk.call(lst.address, b"anyone?", timeout=0.3)
    assert 0.29 <= time.monotonic() - t0 < 1.0
    t.join_result()
    for c in holder:
        c.close()


def test_call_peer_closes_without_reply(closer):
    lst = closer.add(sk.listen(("127.0.0.1", 0)))

    def rude() -> None:
        with lst.accept(timeout=STEP_TIMEOUT) as conn:
            conn.recv(timeout=STEP_TIMEOUT)
            conn.shutdown("write")
            with pytest.raises(sk.ConnectionClosed):
                conn.recv(timeout=STEP_TIMEOUT)

    t = start_thread(rude, name="rude")
    with pytest.raises(sk.ConnectionClosed):
        sk.call(lst.address, b"hi", timeout=STEP_TIMEOUT)
    t.join_result()


# ------------------------------------------- requests and a blocked pipe


def test_request_not_sent_owes_no_reply(conn_to_raw):
    """A request that timed out before any byte of it was taken was never
    sent: no reply is owed, so the next real reply is not discarded."""
    conn, raw = conn_to_raw(rcvbuf=4096)
    big = bytes(8 << 20)
    with pytest.raises(sk.Timeout):
        conn.send(big, timeout=0.2)  # fills the pipe, keeps a torn tail
    assert conn.unsent > 0
    with pytest.raises(sk.Timeout):
        conn.request(b"q", timeout=0.1)  # stuck behind the tail: not sent
    assert conn.pending_replies == 0
    raw_reader = start_thread(recv_frame, raw, 4, "big", STEP_TIMEOUT, name="reader")
    conn.flush(timeout=STEP_TIMEOUT)
    assert raw_reader.join_result() == big
    raw.sendall(b"\x00\x00\x00\x05reply")
    assert conn.recv(timeout=STEP_TIMEOUT) == b"reply"
    assert conn.late_replies_dropped == 0


def test_request_torn_in_send_still_owes_its_reply(conn_to_raw):
    """A request cut short while being sent is completed later, so its reply
    will come: it is owed and discarded, and the next request stays in step."""
    conn, raw = conn_to_raw(rcvbuf=4096)
    big = b"R" * (8 << 20)
    with pytest.raises(sk.Timeout):
        conn.request(big, timeout=0.2)
    assert conn.unsent > 0
    assert conn.pending_replies == 1

    def server() -> list[int]:
        sizes = []
        for _ in range(2):
            req = recv_frame(raw, 4, "big", STEP_TIMEOUT)
            sizes.append(len(req))
            reply = b"reply-to-%d" % len(req)
            raw.sendall(len(reply).to_bytes(4, "big") + reply)
        return sizes

    t = start_thread(server, name="raw-server")
    assert conn.request(b"small", timeout=STEP_TIMEOUT) == b"reply-to-5"
    assert t.join_result() == [len(big), 5]
    assert conn.late_replies_dropped == 1
    assert conn.pending_replies == 0


# --------------------------- request() in every mode, and a peer that drops


class DroppingPeer:
    """A stdlib-socket server in a thread that behaves like a Netty server
    with LengthFieldBasedFrameDecoder(maxFrameLength) and Netty's default
    handling of TooLongFrameException (logged, nothing answered, the
    connection stays open): a frame over ``limit`` bytes is skipped
    silently; every other frame is answered with its payload upper-cased,
    in order.  Serves one client until it closes."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.lst = socket.create_server(("127.0.0.1", 0))
        self.address = self.lst.getsockname()[:2]
        self.dropped = 0
        self.thread = start_thread(self._run, name="dropping-peer")

    def _run(self) -> int:
        self.lst.settimeout(STEP_TIMEOUT)
        conn, _ = self.lst.accept()
        answered = 0
        with conn:
            while True:
                try:
                    header = recv_exact(conn, 4, timeout=scaled(30))
                except EOFError:
                    return answered
                payload = recv_exact(conn, int.from_bytes(header, "big"))
                if len(payload) > self.limit:
                    self.dropped += 1
                    continue
                conn.sendall(header + payload.upper())
                answered += 1

    def close(self) -> int:
        try:
            return int(self.thread.join_result())
        finally:
            self.lst.close()


@pytest.fixture
def dropping_peer():
    peers: list[DroppingPeer] = []

    def make(limit: int = 64) -> DroppingPeer:
        peers.append(DroppingPeer(limit))
        return peers[-1]

    yield make
    for p in peers:
        p.thread.join(STEP_TIMEOUT)
        p.lst.close()


TOO_BIG = b"x" * 100
LONG_ENOUGH = scaled(1.0)  # for a reply the peer sends at once


def test_sync_request_to_a_peer_that_drops_a_request(dropping_peer):
    """The dropped request times out owing its reply (the message says what
    that means); the next request's reply is then dropped in its place,
    and that request raises sk.OutOfStep, a Timeout that says replies are
    behind and what to do.  It stays so: no later reply can be matched."""
    peer = dropping_peer()
    with sk.connect(peer.address, timeout=STEP_TIMEOUT) as conn:
        assert conn.request(b"a", timeout=STEP_TIMEOUT) == b"A"
        with pytest.raises(sk.Timeout) as first:
            conn.request(TOO_BIG, timeout=0.2)
        assert type(first.value) is sk.Timeout
        assert first.value.owed == 1 and conn.pending_replies == 1
        msg = str(first.value)
        assert "1 owed" in msg and "dropped the request" in msg
        assert "correlation=True" in msg and "in step" not in msg
        for k, payload in enumerate([b"b", b"c"]):
            with pytest.raises(sk.OutOfStep) as behind:
                conn.request(payload, timeout=LONG_ENOUGH)
            assert isinstance(behind.value, sk.Timeout)
            assert behind.value.owed == 1
            assert conn.late_replies_dropped == k + 1  # b"B", then b"C"
            msg = str(behind.value)
            assert "behind their requests" in msg and "reconnect" in msg
            assert "correlation=True" in msg
    assert peer.close() == 3 and peer.dropped == 1


def test_aio_request_to_a_peer_that_drops_a_request(dropping_peer):
    import pysockkit.aio as aio

    peer = dropping_peer()

    async def main() -> None:
        conn = await aio.connect(peer.address, timeout=STEP_TIMEOUT)
        try:
            assert await conn.request(b"a", timeout=STEP_TIMEOUT) == b"A"
            with pytest.raises(sk.Timeout) as first:
                await conn.request(TOO_BIG, timeout=0.2)
            assert type(first.value) is sk.Timeout and first.value.owed == 1
            assert "1 owed" in str(first.value) and conn.stats["owed"] == 1
            with pytest.raises(sk.OutOfStep) as behind:
                await conn.request(b"b", timeout=LONG_ENOUGH)
            assert behind.value.owed == 1 and conn.stats["late"] == 1
            assert "behind their requests" in str(behind.value)
        finally:
            conn.close()
            await conn.wait_closed()

    asyncio.run(asyncio.wait_for(main(), STEP_TIMEOUT * 3))
    assert peer.close() == 2 and peer.dropped == 1


def test_threaded_request_async_to_a_peer_that_drops_a_request(dropping_peer):
    peer = dropping_peer()
    with sk.connect(peer.address, timeout=STEP_TIMEOUT) as conn:
        assert conn.request_async(b"a", timeout=STEP_TIMEOUT).result() == b"A"
        with pytest.raises(sk.Timeout) as first:
            conn.request_async(TOO_BIG, timeout=0.2).result()
        assert type(first.value) is sk.Timeout
        with pytest.raises(sk.OutOfStep, match="behind their requests"):
            conn.request_async(b"b", timeout=LONG_ENOUGH).result()
        assert conn.duplex is not None and conn.duplex.stats["late"] == 1
    assert peer.close() == 2 and peer.dropped == 1


def test_a_late_reply_alone_is_not_out_of_step(conn_pair):
    """A peer that was slow once: the late reply is dropped during the next
    request, whose own reply then comes: no error, nothing owed."""
    cli, srv = conn_pair()
    server = start_thread(_delaying_server, srv, {b"one": 0.4}, name="slow-server")
    with pytest.raises(sk.Timeout) as first:
        cli.request(b"one", timeout=0.15)
    assert type(first.value) is sk.Timeout
    assert cli.request(b"two", timeout=STEP_TIMEOUT) == b"reply:two"
    assert cli.late_replies_dropped == 1 and cli.pending_replies == 0
    cli.shutdown("write")
    server.join_result()


def test_threaded_plain_requests_pipeline_in_order_against_sk_serve():
    """request_async on plain framing: many in flight, replies in order."""
    with sk.serve(("127.0.0.1", 0), handler=lambda m: b"re:" + m) as server:
        with sk.connect(server.address, timeout=STEP_TIMEOUT) as conn:
            futs = [conn.request_async(b"%d" % i, timeout=STEP_TIMEOUT) for i in range(500)]
            assert [f.result() for f in futs] == [b"re:%d" % i for i in range(500)]
            assert conn.duplex is not None
            st = conn.duplex.stats
            assert st["replies"] == 500 and st["late"] == st["unknown"] == 0


def test_threaded_plain_late_reply_goes_to_nobody_and_messages_still_arrive(conn_pair):
    """A timed-out plain request owes its reply: dropped when it comes, not
    given to the next request; a frame while nothing is owed is a message."""
    cli, srv = conn_pair()
    with pytest.raises(sk.Timeout):
        cli.request_async(b"q1", timeout=0.1).result()
    fut = cli.request_async(b"q2", timeout=STEP_TIMEOUT)
    assert srv.recv(timeout=STEP_TIMEOUT) == b"q1"
    assert srv.recv(timeout=STEP_TIMEOUT) == b"q2"
    srv.send_many([b"late answer to q1", b"answer to q2", b"unsolicited"])
    assert fut.result() == b"answer to q2"
    assert cli.duplex is not None
    assert cli.duplex.get(timeout=STEP_TIMEOUT) == b"unsolicited"
    assert cli.duplex.stats["late"] == 1
