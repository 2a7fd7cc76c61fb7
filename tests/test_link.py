"""sk.testing.Link: faults below TCP in a private network namespace.

The link drops packets at the IP layer (nftables in ``unshare -Urn``), so
the kernel's TCP really retransmits (TCP_INFO counts it), really backs its
RTO off while the link is cut, and really paces to a tbf rate; nothing is
mocked.  There is no netem in this kernel: delay, jitter and reordering
come from an NFQUEUE handler in the namespace (packets held until their
due time), duplication from nftables' ``dup``; the tests check what TCP
sees of them (round trips, SACK-detected reordering, D-SACKs, a zero
window).  Waits are bounded; lower bounds are exact, upper bounds scaled.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import pysockkit as sk
from helpers import scaled
from pysockkit.lab import LabUnavailable
from pysockkit.testing import Link

T = scaled(10.0)


@pytest.fixture
def conn(sk_link: Link) -> Iterator[tuple]:
    """(client on A, server's accepted socket on B)."""
    srv = sk_link.listen()
    cli = sk_link.connect(srv.getsockname(), timeout=T)
    peer, _ = srv.accept()
    peer.settimeout(T)
    srv.close()
    try:
        yield cli, peer
    finally:
        cli.close()
        peer.close()


def transfer(cli, peer, n: int) -> float:
    got = bytearray()

    def read() -> None:
        while len(got) < n:
            chunk = peer.recv(65536)
            assert chunk
            got.extend(chunk)

    t = threading.Thread(target=read)
    t0 = time.monotonic()
    t.start()
    cli.sendall(bytes(range(256)) * (n // 256))
    t.join(T)
    assert not t.is_alive()
    assert bytes(got) == bytes(range(256)) * (n // 256)
    return time.monotonic() - t0


def test_two_hosts_in_a_private_namespace(sk_link: Link, conn) -> None:
    cli, peer = conn
    assert cli.getsockname()[0] == Link.A and peer.getsockname()[0] == Link.B
    assert sk.tcp_info(cli).pmtu_bytes == 1500  # the link's MTU, not lo's 64 KiB


def test_loss_makes_tcp_retransmit(sk_link: Link, conn) -> None:
    cli, peer = conn
    assert sk.tcp_info(cli).total_retrans_segs == 0
    sk_link.set(loss=0.1)
    assert sk_link.faults["loss"] == 0.1
    transfer(cli, peer, 256 * 1024)  # intact, however many were lost
    info = sk.tcp_info(cli)
    print(f"10 % loss: {info.total_retrans_segs} segments retransmitted "
          f"({info.bytes_retrans} bytes) of {info.data_segs_out}")
    assert info.total_retrans_segs > 0 and info.bytes_retrans > 0


def test_cut_backs_the_rto_off_and_recovers(sk_link: Link, conn) -> None:
    cli, peer = conn
    sk_link.set(cut=True)
    cli.send(b"into the void")
    deadline = time.monotonic() + T
    while sk.tcp_info(cli).backoff < 2:  # two RTOs: 200 ms, then 400 ms
        assert time.monotonic() < deadline, sk.tcp_info(cli)
        time.sleep(0.02)
    info = sk.tcp_info(cli)
    assert info.retransmits >= 2 and info.rto_us >= 2 * 200_000
    sk_link.clear()
    assert peer.recv(100) == b"into the void"  # the next retransmission gets through


def test_rate_paces_the_link(sk_link: Link, conn) -> None:
    cli, peer = conn
    rate = 200_000  # bytes/s on the wire, headers and ACKs included
    sk_link.set(rate=rate)
    n = 150_016
    took = transfer(cli, peer, n)
    print(f"{n} bytes at {rate} B/s: {took:.3f} s ({n / took:.0f} B/s of payload)")
    assert took >= (n - 64 * 1024) / rate  # at most one 64 KiB burst early
    sk_link.set(no_rate=True)
    assert sk_link.faults["rate"] is None
    assert transfer(cli, peer, n) < took


def ping_pong(cli, peer, n: int = 20) -> list[float]:
    """n one-byte round trips A -> B -> A; their times, sorted."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        cli.sendall(b"p")
        assert peer.recv(1) == b"p"
        peer.sendall(b"q")
        assert cli.recv(1) == b"q"
        times.append(time.monotonic() - t0)
    return sorted(times)


def test_delay_holds_each_packet_each_way(sk_link: Link, conn) -> None:
    cli, peer = conn
    delay = 0.02
    sk_link.set(delay=delay)
    times = ping_pong(cli, peer)
    rtt_us = sk.tcp_info(cli).rtt_us
    print(f"delay {delay * 1e3:g} ms each way: round trips {times[0] * 1e3:.2f} ms min, "
          f"{times[len(times) // 2] * 1e3:.2f} ms median, {times[-1] * 1e3:.2f} ms max; "
          f"tcp_info rtt {rtt_us} us; {sk_link.stats()}")
    assert times[0] >= 2 * delay                      # never early, each way
    assert times[len(times) // 2] <= 2 * delay + scaled(0.05)
    assert sk_link.stats()["held"] >= 2 * len(times)
    sk_link.set(delay=0)
    assert ping_pong(cli, peer, 5)[0] < 2 * delay     # and gone again


def test_jitter_spreads_the_delay(sk_link: Link, conn) -> None:
    cli, peer = conn
    delay, jitter = 0.02, 0.01
    sk_link.set(delay=delay, jitter=jitter)
    times = ping_pong(cli, peer, 30)
    print(f"delay {delay * 1e3:g} +- {jitter * 1e3:g} ms: round trips "
          f"{times[0] * 1e3:.2f} .. {times[-1] * 1e3:.2f} ms")
    assert times[0] >= 2 * (delay - jitter)
    # two uniform draws per round trip: 30 round trips spread over more than
    # a quarter of the 40 ms range, except with a vanishing probability
    assert times[-1] - times[0] > jitter


def test_reorder_lets_packets_overtake(sk_link: Link, conn) -> None:
    cli, peer = conn
    sk_link.set(delay=0.01, reorder=0.25)
    transfer(cli, peer, 512 * 1024)  # the byte stream is intact
    info, stats = sk.tcp_info(cli), sk_link.stats()
    print(f"reorder 25 % with 10 ms delay: {stats}; sender reord_seen {info.reord_seen}, "
          f"reordering {info.reordering_segs}, dsack_dups {info.dsack_dups}, "
          f"retransmitted {info.total_retrans_segs} of {info.data_segs_out}")
    assert stats["passed"] > 0 and stats["held"] > 0
    # the sender learns of the reordering from the receiver's SACKs
    assert info.reord_seen is not None and info.reord_seen > 0


def test_duplicate_delivers_packets_twice(sk_link: Link, conn) -> None:
    cli, peer = conn
    sk_link.set(duplicate=0.1)
    transfer(cli, peer, 512 * 1024)
    info, stats = sk.tcp_info(cli), sk_link.stats()
    print(f"duplicate 10 %: {stats['duplicated']} copies; sender dsack_dups "
          f"{info.dsack_dups} of {info.data_segs_out} segments, "
          f"retransmitted {info.total_retrans_segs}")
    assert stats["duplicated"] > 0
    # the receiver reports each duplicate segment it got (D-SACK); more of
    # them than retransmissions: some were the link's copies
    assert info.dsack_dups is not None and info.dsack_dups > (info.total_retrans_segs or 0)
    sk_link.clear()
    assert sk_link.stats()["duplicated"] == stats["duplicated"]  # counts are kept


def test_duplicate_copies_each_packet_once(sk_link: Link, conn) -> None:
    cli, peer = conn
    sk_link.set(duplicate=1)          # every packet: a copy would loop if copied
    times = ping_pong(cli, peer, 20)  # and the link still works
    copies = sk_link.stats()["duplicated"]
    time.sleep(0.5)                   # a looping copy would go round meanwhile
    later = sk_link.stats()["duplicated"]
    print(f"duplicate 100 %: {copies} copies for 20 round trips, {later} 0.5 s later")
    # a round trip is 2 data segments, their copies' D-SACK ACKs and maybe
    # a delayed ACK: a handful of packets, each copied once
    assert 20 * 2 <= copies <= 20 * 8, copies
    assert later - copies <= 4       # at most a last delayed ACK and its copy's D-SACK
    assert len(times) == 20


def test_zero_window_probes_then_resumes(sk_link: Link) -> None:
    srv = sk_link.listen()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by peer
    cli = sk_link.connect(srv.getsockname(), timeout=T)
    peer, _ = srv.accept()
    srv.close()
    with cli, peer:
        sk_link.set(delay=0.005)
        cli.setblocking(False)
        sent = 0
        deadline = time.monotonic() + T
        while True:  # the receiver does not read: fill its window, then our buffer
            assert time.monotonic() < deadline, sk.tcp_info(cli)
            try:
                sent += cli.send(bytes(65536))
            except BlockingIOError:
                if sk.tcp_info(cli).snd_wnd_bytes == 0:
                    break                            # the sender is blocked
                time.sleep(0.01)
        # zero-window probes: each is answered (window still 0, which resets
        # tcpi_probes), and the probe timer backs off: 200, 400, 800 ms...
        while (sk.tcp_info(cli).backoff or 0) < 2:
            assert time.monotonic() < deadline, sk.tcp_info(cli)
            time.sleep(0.02)
        info = sk.tcp_info(cli)
        print(f"zero window after {sent} bytes: sender snd_wnd {info.snd_wnd_bytes}, "
              f"backoff {info.backoff}, unacked {info.unacked_segs}, "
              f"not sent {info.notsent_bytes}; "
              f"receiver rcv_wnd {sk.tcp_info(peer).rcv_wnd_bytes}")
        assert info.snd_wnd_bytes == 0 and info.unacked_segs == 0  # probing, not retransmitting
        assert (info.notsent_bytes or 0) > 0
        assert sk.tcp_info(peer).rcv_wnd_bytes == 0  # what the receiver advertises
        cli.setblocking(True)
        cli.settimeout(T)
        got = 0
        while got < sent:                            # reading resumes: all of it arrives
            chunk = peer.recv(65536)
            assert chunk and not any(chunk)
            got += len(chunk)
        assert got == sent
        cli.sendall(b"after")
        assert peer.recv(5) == b"after"


def test_queue_limit_drops_and_counts(sk_link: Link, conn) -> None:
    cli, peer = conn
    sk_link.set(delay=0.1, limit=4)   # the initial window is 10 segments
    transfer(cli, peer, 64 * 1024)     # intact: TCP retransmits what the cap dropped
    stats = sk_link.stats()
    print(f"limit 4, 100 ms delay: {stats}")
    assert stats["overflow"] > 0 and stats["most_held"] <= 4
    assert sk.tcp_info(cli).total_retrans_segs > 0


def test_bad_fault_values_are_refused(sk_link: Link) -> None:
    with pytest.raises(ValueError, match="probability"):
        sk_link.set(loss=2)
    with pytest.raises(ValueError, match="probability"):
        sk_link.set(duplicate=-0.1)
    with pytest.raises(ValueError, match="seconds"):
        sk_link.set(delay=-1)
    with pytest.raises(ValueError, match="needs a delay"):
        sk_link.set(reorder=0.5)
    with pytest.raises(ValueError, match="limit"):
        sk_link.set(limit=0)
    with pytest.raises(ValueError, match="bytes/s"):
        sk_link.set(rate=1)
    assert sk_link.faults["delay"] == 0 and sk_link.faults["reorder"] == 0


def held_pair(link: Link) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(listener, client, accepted peer) on link, with b"held" sent while
    the link delays every packet by 0.2 s: it sits in the delay queue."""
    srv = link.listen()
    cli = link.connect(srv.getsockname(), timeout=T)
    peer, _ = srv.accept()
    link.set(delay=0.2)
    cli.sendall(b"held")
    return srv, cli, peer


def test_closing_a_delayed_link_strands_no_packet() -> None:
    link = Link()
    try:
        srv, cli, peer = held_pair(link)  # b"held" in the delay queue when the link closes
    finally:
        link.close()          # the handler lets what it holds go, and unbinds
    with srv, cli, peer:
        peer.settimeout(T)
        assert peer.recv(4) == b"held"
        # the namespace lives on with the sockets; its NFQUEUE rule has
        # --queue-bypass, so with no handler bound, packets pass
        transfer(cli, peer, 64 * 1024)


def test_a_killed_handler_strands_no_traffic() -> None:
    link = Link()
    try:
        srv, cli, peer = held_pair(link)
        proc = link._res.proc
        assert proc is not None
        proc.kill()  # the helper, its handler thread and its queue socket go at once
        proc.wait(T)
    finally:
        link.close()
    with srv, cli, peer:
        peer.settimeout(T)
        # what the dead handler held is dropped by the kernel and retransmitted;
        # the rule's bypass passes everything after
        assert peer.recv(4) == b"held"
        transfer(cli, peer, 64 * 1024)


def test_without_iptables_a_delay_is_unavailable(tmp_path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"  # the tools a Link needs, but not iptables
    bin_dir.mkdir()
    for tool in ("unshare", "ip", "nft", "tc"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    with Link() as link:
        with pytest.raises(LabUnavailable, match="iptables is not installed"):
            link.set(delay=0.01)
        assert link.faults["delay"] == 0
        link.set(loss=0.01)  # the rest of the link still works
        srv = link.listen()
        with srv, link.connect(srv.getsockname(), timeout=T) as cli:
            peer, _ = srv.accept()
            with peer:
                peer.settimeout(T)
                transfer(cli, peer, 64 * 1024)


def test_closed_link_says_so() -> None:
    link = Link()
    link.close()
    assert link.closed
    with pytest.raises(sk.Error, match="closed"):
        link.socket()
