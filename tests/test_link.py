"""sk.testing.Link: faults below TCP in a private network namespace.

The link drops packets at the IP layer (nftables in ``unshare -Urn``), so
the kernel's TCP really retransmits (TCP_INFO counts it), really backs its
RTO off while the link is cut, and really paces to a tbf rate; nothing is
mocked.  tc netem is not in this kernel (checked by
test_netem_faults_are_refused_clearly), so delay, reordering and
duplication are refused with a message saying so.  Waits are bounded;
lower bounds are exact, upper bounds scaled.
"""

from __future__ import annotations

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


def test_netem_faults_are_refused_clearly(sk_link: Link) -> None:
    with pytest.raises(LabUnavailable, match="netem"):
        sk_link.set(delay=0.05)
    with pytest.raises(ValueError, match="probability"):
        sk_link.set(loss=2)
    with pytest.raises(ValueError, match="bytes/s"):
        sk_link.set(rate=1)


def test_closed_link_says_so() -> None:
    link = Link()
    link.close()
    assert link.closed
    with pytest.raises(sk.Error, match="closed"):
        link.socket()
