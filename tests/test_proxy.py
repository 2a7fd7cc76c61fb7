"""FaultProxy (csrc/proxy.c, pysockkit/_proxy.py) on real loopback sockets.

Every fault, per direction, switched on and off while a connection is live;
bounded memory with a client that stops reading; cleanup with no leaked
descriptor or thread.  Timing bounds are exact at the bottom (a fault
must really delay: lower bounds hold under any load) and loose at the top,
through helpers.scaled().  That a fault leaves the other direction (or the
data before a FIN) alone is shown with a fault of an hour, not with a
latency measured against a constant.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import pysockkit as sk
from helpers import decode_tcp_info, scaled, start_thread, tcp_info_raw
from pysockkit.testing.proxy import (
    Bandwidth,
    FaultHandle,
    FaultProxy,
    Latency,
    LimitData,
    ProxiedConnection,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
)

T = scaled(5.0)  # bound for any step that should be quick
HOUR_MS = 3_600_000  # a fault this long never ends within a test


@dataclass
class Link:
    """client -> proxy -> server, with both ends in the test's hands."""

    proxy: FaultProxy
    client: sk.Connection
    server: sk.Connection


@pytest.fixture
def make_link() -> Iterator[object]:
    opened: list[object] = []

    def make(**options: object) -> Link:
        lst = sk.listen(("127.0.0.1", 0))
        opened.append(lst)
        proxy = FaultProxy(lst.address, **options)  # type: ignore[arg-type]
        opened.append(proxy)
        client = sk.connect(proxy.address, timeout=T)
        opened.append(client)
        server = lst.accept(timeout=T)
        opened.append(server)
        proxy.wait_connections(1, timeout=T)
        return Link(proxy, client, server)

    yield make
    for obj in reversed(opened):
        obj.close()  # type: ignore[attr-defined]


@pytest.fixture
def link(make_link) -> Link:
    return make_link()


@pytest.fixture
def echo_proxy() -> Iterator[FaultProxy]:
    with sk.serve() as srv, FaultProxy(srv.address) as proxy:
        yield proxy


def eventually(pred: "object", timeout: float = T) -> bool:
    """Poll pred() until true (counters are updated by the proxy's thread
    just after the bytes went out, so a reader may see data first)."""
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _tasks() -> set[str]:
    return set(os.listdir("/proc/self/task"))


# ----------------------------------------------------------------- plumbing


def test_passthrough_counts_and_connections(link: Link) -> None:
    link.client.send(b"ping")
    assert link.server.recv(timeout=T) == b"ping"
    link.server.send(b"pong!")
    assert link.client.recv(timeout=T) == b"pong!"
    assert eventually(lambda: link.proxy.stats.bytes_downstream == 9)
    st = link.proxy.stats
    assert (st.bytes_upstream, st.bytes_downstream) == (8, 9)
    assert st.connections == 1 and st.accepted == 1 and st.buffered == 0
    [c] = link.proxy.connections
    assert isinstance(c, ProxiedConnection)
    assert c.client == link.client.local_address
    assert c.upstream_local == link.server.remote_address
    assert (c.bytes_upstream, c.bytes_downstream, c.connecting) == (8, 9, False)


def test_large_transfer_is_intact_and_buffers_stay_bounded(make_link) -> None:
    lk = make_link(buffer_size=16384)
    rng = random.Random(1)
    frames = [rng.randbytes(rng.randint(0, 200_000)) for _ in range(40)]
    got: list[bytes] = []

    def reader() -> None:
        for _ in frames:
            got.append(lk.server.recv(timeout=T))

    t = threading.Thread(target=reader)
    t.start()
    lk.client.send_many(frames, timeout=T)
    t.join(T)
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(b"".join(frames)).digest()
    assert got == frames
    assert lk.proxy.stats.buffered_peak <= 2 * 16384


def test_half_close_is_forwarded(link: Link) -> None:
    link.client.send(b"last")
    link.client.shutdown("write")
    assert link.server.recv(timeout=T) == b"last"
    with pytest.raises(sk.ConnectionClosed):
        link.server.recv(timeout=T)
    link.server.send(b"reply after FIN")  # the other direction still works
    assert link.client.recv(timeout=T) == b"reply after FIN"
    link.server.close()
    with pytest.raises(sk.ConnectionClosed):
        link.client.recv(timeout=T)
    deadline = time.monotonic() + T
    while link.proxy.stats.connections and time.monotonic() < deadline:
        time.sleep(0.005)
    assert link.proxy.stats.connections == 0


def test_a_reset_is_propagated(link: Link) -> None:
    link.server.abort()
    with pytest.raises(sk.ConnectionReset):
        link.client.recv(timeout=T)


# ----------------------------------------------------------------- latency


def _one_way(sender: sk.Connection, receiver: sk.Connection) -> float:
    t0 = time.monotonic()
    sender.send(b"x")
    receiver.recv(timeout=T)
    return time.monotonic() - t0


def test_latency_delays_its_direction(link: Link) -> None:
    with link.proxy.fault("latency", ms=120, direction="upstream"):
        assert 0.115 <= _one_way(link.client, link.server) < scaled(1.0)
    with link.proxy.fault(Latency(ms=120), direction="downstream"):
        assert 0.115 <= _one_way(link.server, link.client) < scaled(1.0)
    with link.proxy.fault("latency", ms=60):  # both
        t0 = time.monotonic()
        link.client.send(b"q")
        link.server.send(link.server.recv(timeout=T))
        link.client.recv(timeout=T)
        assert 0.115 <= time.monotonic() - t0 < scaled(1.0)


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
def test_latency_leaves_the_other_direction_alone(make_link, direction: str) -> None:
    """An hour of latency one way: the proxy holds that frame, while a
    frame the other way is delivered (a bounded wait far below an hour)."""
    lk = make_link()
    ends = (lk.client, lk.server) if direction == "upstream" else (lk.server, lk.client)
    near, far = ends
    held, other = f"buffered_{direction}", ("buffered_downstream" if direction == "upstream"
                                            else "buffered_upstream")
    lk.proxy.add("latency", ms=HOUR_MS, direction=direction)
    near.send(b"held")
    assert eventually(lambda: getattr(lk.proxy.connections[0], held) == 8)
    far.send(b"free")
    assert near.recv(timeout=T) == b"free"
    with pytest.raises(sk.Timeout):
        far.recv(timeout=0.05)
    [c] = lk.proxy.connections
    assert (getattr(c, held), getattr(c, other)) == (8, 0)


def test_latency_jitter_keeps_order(link: Link) -> None:
    with link.proxy.fault("latency", ms=20, jitter_ms=15, direction="upstream"):
        for i in range(30):
            link.client.send(i.to_bytes(2, "big"))
            time.sleep(0.001)
        got = [int.from_bytes(link.server.recv(timeout=T), "big") for _ in range(30)]
    assert got == list(range(30))


def test_removing_latency_keeps_what_it_holds_in_order(link: Link) -> None:
    hold = scaled(0.5)  # long enough for this thread to see the bytes held
    h = link.proxy.add("latency", ms=hold * 1000, direction="downstream")
    t0 = time.monotonic()
    link.server.send(b"slow")
    # the proxy holds it
    assert eventually(lambda: link.proxy.connections[0].buffered_downstream == 8)
    link.proxy.remove(h)
    link.server.send(b"fast")
    # bytes already held keep their release time; the order never changes
    assert link.client.recv(timeout=T) == b"slow"
    assert time.monotonic() - t0 >= hold - 0.005
    assert link.client.recv(timeout=T) == b"fast"


def test_removing_latency_affects_new_bytes_at_once(echo_proxy: FaultProxy) -> None:
    """An hour of latency holds one client's echo; once removed, another
    client's echo comes back at once (a bounded wait far below an hour),
    while the held bytes keep their hour."""
    with sk.connect(echo_proxy.address, timeout=T) as first:
        h = echo_proxy.add("latency", ms=HOUR_MS, direction="downstream")
        first.send(b"held")
        # the echo (not the request on its way up, 8 bytes too) is held
        assert eventually(lambda: [c.buffered_downstream for c in echo_proxy.connections] == [8])
        assert echo_proxy.remove(h) is True
        assert sk.call(echo_proxy.address, b"now", timeout=T) == b"now"
        # (the counters follow the writes: poll until the second client is gone)
        assert eventually(lambda: echo_proxy.stats.connections == 1)
        [c] = echo_proxy.connections
        assert (c.client, c.buffered_downstream) == (first.local_address, 8)
        with pytest.raises(sk.Timeout):
            first.recv(timeout=0.05)


# ----------------------------------------------------------------- bandwidth


def test_bandwidth_paces_one_direction(link: Link) -> None:
    payload = bytes(30_000)
    rate = 100_000
    with link.proxy.fault(Bandwidth(rate=rate), direction="downstream"):
        t0 = time.monotonic()
        link.server.send(payload)
        assert link.client.recv(timeout=T) == payload
        down = time.monotonic() - t0
        # upstream is not paced: at `rate` this frame would take 2 T
        big = bytes(int(rate * 2 * T))
        reader = start_thread(link.server.recv, T)
        link.client.send(big, timeout=T)
        assert reader.join_result() == big
    print(f"30 kB at 100 kB/s: {down:.3f} s")
    assert 0.25 <= down < scaled(1.5)  # 30 kB at 100 kB/s: 0.3 s


# ----------------------------------------------------------------- stall


def test_stall_holds_then_delivers_intact(link: Link) -> None:
    h = link.proxy.add("stall", direction="downstream")
    link.server.send_many([b"one", b"two"])
    with pytest.raises(sk.Timeout):
        link.client.recv(timeout=0.15)
    link.client.send(b"upstream still flows")
    assert link.server.recv(timeout=T) == b"upstream still flows"
    assert link.proxy.stats.buffered > 0
    link.proxy.remove(h)
    assert link.client.recv(timeout=T) == b"one"
    assert link.client.recv(timeout=T) == b"two"


def test_stall_holds_eof_too(link: Link) -> None:
    with link.proxy.fault("stall", direction="upstream"):
        link.client.send(b"bye")
        link.client.shutdown("write")
        with pytest.raises(sk.Timeout):
            link.server.recv(timeout=0.15)
    assert link.server.recv(timeout=T) == b"bye"
    with pytest.raises(sk.ConnectionClosed):
        link.server.recv(timeout=T)


def test_stall_timeout_closes_the_connection(link: Link) -> None:
    t0 = time.monotonic()
    link.proxy.add(Stall(timeout_ms=100))
    with pytest.raises(sk.ConnectionClosed):
        link.client.recv(timeout=T)
    assert 0.09 <= time.monotonic() - t0 < scaled(2.0)
    with pytest.raises(sk.ConnectionClosed):
        link.server.recv(timeout=T)
    assert eventually(lambda: link.proxy.stats.stall_closes == 1)


# ----------------------------------------------------------------- reset_peer


def test_reset_peer_downstream_resets_the_client(link: Link) -> None:
    t0 = time.monotonic()
    link.proxy.add("reset_peer", delay_ms=100, direction="downstream")
    with pytest.raises(sk.ConnectionReset):
        link.client.recv(timeout=T)
    assert 0.09 <= time.monotonic() - t0 < scaled(2.0)
    with pytest.raises(sk.ConnectionClosed) as exc:  # orderly on the far side
        link.server.recv(timeout=T)
    assert not isinstance(exc.value, sk.ConnectionReset)
    assert eventually(lambda: link.proxy.stats.resets == 1)


def test_reset_peer_upstream_resets_the_server(link: Link) -> None:
    link.proxy.add(ResetPeer(), direction="upstream")
    with pytest.raises(sk.ConnectionReset):
        link.server.recv(timeout=T)
    with pytest.raises(sk.ConnectionClosed) as exc:
        link.client.recv(timeout=T)
    assert not isinstance(exc.value, sk.ConnectionReset)


def test_reset_peer_applies_to_new_connections(echo_proxy: FaultProxy) -> None:
    echo_proxy.add("reset_peer", direction="downstream")
    with pytest.raises(sk.ConnectionReset):
        # the RST may even beat connect() to its SO_ERROR check
        with sk.connect(echo_proxy.address, timeout=T) as c:
            c.recv(timeout=T)


# ----------------------------------------------------------------- slow_close


def test_slow_close_delays_the_fin(link: Link) -> None:
    with link.proxy.fault(SlowClose(delay_ms=200), direction="upstream"):
        t0 = time.monotonic()
        link.client.send(b"data first")
        link.client.shutdown("write")
        assert link.server.recv(timeout=T) == b"data first"
        with pytest.raises(sk.ConnectionClosed):
            link.server.recv(timeout=T)
        assert 0.19 <= time.monotonic() - t0 < scaled(2.0)


def test_slow_close_delays_only_the_fin(link: Link) -> None:
    """The FIN held for an hour: the data before it, and the other
    direction, are delivered (a bounded wait far below an hour)."""
    with link.proxy.fault(SlowClose(delay_ms=HOUR_MS), direction="upstream"):
        link.client.send(b"data first")
        link.client.shutdown("write")
        assert link.server.recv(timeout=T) == b"data first"
        with pytest.raises(sk.Timeout):
            link.server.recv(timeout=0.05)  # no FIN yet
        link.server.send(b"the other way")
        assert link.client.recv(timeout=T) == b"the other way"


# ----------------------------------------------------------------- slicer


def test_slicer_splits_but_frames_stay_intact(echo_proxy: FaultProxy) -> None:
    rng = random.Random(2)
    frames = [rng.randbytes(rng.randint(0, 40)) for _ in range(40)]
    with echo_proxy.fault(Slicer(average_size=3, size_variation=2, delay_us=50)):
        with sk.connect(echo_proxy.address, timeout=T) as c:
            c.send_many(frames, timeout=T)
            got = [c.recv(timeout=T) for _ in frames]
    assert got == frames


def test_slicer_default_sends_one_byte_at_a_time(make_link) -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        with FaultProxy(ls.getsockname()) as proxy:
            cli = socket.create_connection(proxy.address, timeout=T)
            srv, _ = ls.accept()
            with cli, srv:
                segs_before = decode_tcp_info(tcp_info_raw(cli))["data_segs_in"]
                proxy.add(Slicer(delay_us=2000), direction="downstream")
                srv.sendall(b"abcdefghij")
                chunks = []
                while sum(map(len, chunks)) < 10:
                    chunks.append(cli.recv(100))
                segs = decode_tcp_info(tcp_info_raw(cli))["data_segs_in"] - segs_before
    assert b"".join(chunks) == b"abcdefghij"
    # the kernel counts what came: 1-byte slices, each its own segment
    # (TCP_NODELAY, 2 ms apart), however many of them one recv() took
    assert segs == 10, segs


# ----------------------------------------------------------------- limit_data


def test_limit_data_mid_frame_is_an_incomplete_frame(link: Link) -> None:
    link.proxy.add(LimitData(bytes=4 + 3 + 4 + 2), direction="downstream")
    link.server.send_many([b"abc", b"defgh"])
    assert link.client.recv(timeout=T) == b"abc"
    with pytest.raises(sk.IncompleteFrame) as exc:
        link.client.recv(timeout=T)
    assert exc.value.missing == 3  # type: ignore[attr-defined]
    assert eventually(lambda: link.proxy.stats.limits == 1)


def test_limit_data_at_a_boundary_is_a_clean_close(link: Link) -> None:
    link.proxy.add("limit_data", bytes=4 + 5, direction="upstream")
    link.client.send(b"hello")
    assert link.server.recv(timeout=T) == b"hello"
    with pytest.raises(sk.ConnectionClosed) as exc:
        link.server.recv(timeout=T)
    assert not isinstance(exc.value, (sk.ConnectionReset, sk.IncompleteFrame))


def test_limit_data_counts_from_when_it_is_added(link: Link) -> None:
    link.client.send(b"before the fault")
    assert link.server.recv(timeout=T) == b"before the fault"
    link.proxy.add("limit_data", bytes=9, direction="upstream")
    link.client.send(b"12345")
    assert link.server.recv(timeout=T) == b"12345"


# ----------------------------------------------------------------- switching


def test_switching_faults_while_traffic_flows(link: Link) -> None:
    n = 400
    stop = threading.Event()
    errors: list[BaseException] = []

    def echo() -> None:
        try:
            for _ in range(n):
                link.server.send(link.server.recv(timeout=T), timeout=T)
        except BaseException as exc:
            errors.append(exc)

    def chaos() -> None:
        rng = random.Random(3)
        specs = [Latency(ms=2, jitter_ms=1), Bandwidth(rate=2_000_000),
                 Slicer(average_size=2, size_variation=1), Stall(), SlowClose(delay_ms=5)]
        while not stop.is_set():
            h = link.proxy.add(rng.choice(specs), rng.choice(["upstream", "downstream", "both"]))
            time.sleep(rng.uniform(0, 0.004))
            link.proxy.remove(h)

    threads = [threading.Thread(target=echo), threading.Thread(target=chaos)]
    for t in threads:
        t.start()
    try:
        rng = random.Random(4)
        for i in range(n):
            msg = i.to_bytes(4, "big") + rng.randbytes(rng.randint(0, 300))
            assert link.client.request(msg, timeout=T) == msg
    finally:
        stop.set()
        for t in threads:
            t.join(T)
    assert not errors


def test_many_connections_share_the_faults(echo_proxy: FaultProxy) -> None:
    conns = [sk.connect(echo_proxy.address, timeout=T) for _ in range(20)]
    try:
        echo_proxy.wait_connections(20, timeout=T)
        with echo_proxy.fault("latency", ms=50):
            t0 = time.monotonic()
            for c in conns:
                c.send(b"x")
            for c in conns:
                assert c.recv(timeout=T) == b"x"
            assert time.monotonic() - t0 >= 0.095
    finally:
        for c in conns:
            c.close()


# ----------------------------------------------------------------- memory


def test_a_client_that_stops_reading_blocks_the_server(make_link) -> None:
    lk = make_link(buffer_size=16384)
    big = bytes(256 * 1024)
    sent = 0
    with pytest.raises(sk.Timeout):
        for _ in range(400):  # 100 MiB would be sent if nothing pushed back
            lk.server.send(big, timeout=0.3)
            sent += 1
    assert sent < 100
    st = lk.proxy.stats
    assert st.buffered <= 16384 and st.buffered_peak <= 2 * 16384
    [c] = lk.proxy.connections
    assert c.buffered_downstream <= 16384
    # nothing was lost: the client now reads every frame the server sent
    for _ in range(sent):
        assert lk.client.recv(timeout=T) == big


def test_max_connections_queues_the_rest(echo_proxy: FaultProxy) -> None:
    with sk.serve() as srv, FaultProxy(srv.address, max_connections=2) as proxy:
        a = sk.connect(proxy.address, timeout=T)
        b = sk.connect(proxy.address, timeout=T)
        c = sk.connect(proxy.address, timeout=T)  # completes in the backlog
        try:
            assert a.request(b"a", timeout=T) == b"a"
            assert b.request(b"b", timeout=T) == b"b"
            c.send(b"c")
            with pytest.raises(sk.Timeout):
                c.recv(timeout=0.2)
            a.close()
            assert c.recv(timeout=T) == b"c"
        finally:
            for x in (a, b, c):
                x.close()


# ----------------------------------------------------------------- lifecycle


def test_close_ends_connections_and_leaks_nothing() -> None:
    fds, tasks = _fds(), _tasks()
    srv = sk.serve()
    proxy = FaultProxy(srv.address)
    assert _tasks() - tasks  # the reactor thread
    conns = [sk.connect(proxy.address, timeout=T) for _ in range(5)]
    proxy.wait_connections(5, timeout=T)
    proxy.add("latency", ms=1000, direction="downstream")
    for c in conns:
        c.send(b"held in the proxy")
    proxy.close()
    proxy.close()  # idempotent
    for c in conns:
        with pytest.raises(sk.ConnectionClosed):
            c.recv(timeout=T)
        c.close()
    srv.close()
    deadline = time.monotonic() + T
    while (_fds() - fds or _tasks() - tasks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _fds() - fds == set()
    assert _tasks() - tasks == set()


def test_upstream_refused_resets_the_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    with FaultProxy(dead) as proxy:
        with pytest.raises(sk.ConnectionReset):
            with sk.connect(proxy.address, timeout=T) as c:
                c.recv(timeout=T)
        assert eventually(lambda: proxy.stats.upstream_failures == 1)
        assert proxy.last_error is not None and "refused" in proxy.last_error


def test_context_managers_handles_and_repr(echo_proxy: FaultProxy) -> None:
    assert echo_proxy.faults == [] and "no faults" in repr(echo_proxy)
    with echo_proxy.fault("latency", ms=5, direction="upstream") as h:
        assert isinstance(h, FaultHandle)
        assert h.fault == Latency(ms=5) and h.direction == "upstream"
        assert echo_proxy.faults == [h]
        assert "latency/upstream" in repr(echo_proxy)
    assert echo_proxy.faults == []
    h2 = echo_proxy.add("stall")
    assert echo_proxy.remove(h2) is True
    assert echo_proxy.remove(h2) is False
    echo_proxy.add("stall")
    echo_proxy.add("slicer")
    echo_proxy.clear()
    assert echo_proxy.faults == []
    echo_proxy.close()
    assert echo_proxy.closed and "closed" in repr(echo_proxy)


def test_misuse_raises_clear_errors(echo_proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown fault 'lag'"):
        echo_proxy.add("lag", ms=1)
    with pytest.raises(ValueError, match="direction"):
        echo_proxy.add("latency", direction="sideways", ms=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="latency"):
        echo_proxy.add("latency", millis=1)
    with pytest.raises(TypeError, match="either"):
        echo_proxy.add(Latency(ms=1), ms=2)
    with pytest.raises(ValueError):
        Latency(ms=-1)
    with pytest.raises(ValueError):
        Bandwidth(rate=0)
    with pytest.raises(ValueError, match="smaller"):
        Slicer(average_size=2, size_variation=2)
    with pytest.raises(TypeError):
        LimitData(bytes=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FaultProxy(("127.0.0.1", 1), buffer_size=10)
    handles = [echo_proxy.add("latency", ms=1) for _ in range(64)]
    with pytest.raises(ValueError, match="at most 64"):
        echo_proxy.add("latency", ms=1)
    echo_proxy.remove(handles[0])
    echo_proxy.add("latency", ms=1)
    echo_proxy.close()
    with pytest.raises(sk.ConnectionClosed):
        echo_proxy.add("stall")
    with pytest.raises(sk.ConnectionClosed):
        echo_proxy.stats


def test_unclosed_proxy_warns() -> None:
    with sk.serve() as srv:
        proxy = FaultProxy(srv.address)
        with pytest.warns(ResourceWarning, match="unclosed"):
            del proxy
            import gc

            gc.collect()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback() -> None:
    try:
        lst = sk.listen(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured")
    with lst, FaultProxy(lst.address, ("::1", 0)) as proxy:
        assert proxy.address[0] == "::1"
        with sk.connect(proxy.address, timeout=T) as c, lst.accept(timeout=T) as s:
            c.send(b"six")
            assert s.recv(timeout=T) == b"six"


def test_a_fault_subclass_of_ones_own_is_refused_clearly(echo_proxy: FaultProxy) -> None:
    from pysockkit.testing.proxy import Fault

    @dataclass(frozen=True)
    class Mine(Fault):
        pass

    with pytest.raises(TypeError, match="not a fault the proxy implements"):
        echo_proxy.add(Mine())
    assert echo_proxy.faults == []
    assert sk.call(echo_proxy.address, b"still proxied", timeout=T) == b"still proxied"
