"""Heartbeats and dead-peer detection, against real peer processes.

Every peer is a separate process (tests/hb_peer.py) that we kill, freeze
(SIGSTOP), starve of reads, or cut off in a network namespace.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

import pysockkit as sk
from helpers import child_env, scaled, wait_blocked_on_socket, wait_until

PEER = str(Path(__file__).with_name("hb_peer.py"))
# The peer is declared dead after TIMEOUT of silence: 4 intervals at scale 1,
# more under PYSOCKKIT_TIME_SCALE, so a loaded machine that delays a few
# beats cannot trip it falsely.  Detection bounds are INTERVAL + TIMEOUT
# + 10%, and the interval alone is already slack (docs/heartbeat.md).
INTERVAL, TIMEOUT = 0.2, scaled(0.8)
HB = sk.Heartbeat(INTERVAL, TIMEOUT)
DETECT_BOUND = (INTERVAL + TIMEOUT) * 1.10


class Peer:
    """A hb_peer.py process connected to a listener of ours."""

    def __init__(self, role: str, addr: tuple[str, int], *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, PEER, role, addr[0], str(addr[1]), str(INTERVAL), str(TIMEOUT), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def go_read(self) -> None:
        """Tell a noread --read-on-stdin peer to start reading."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("read\n")
        self.proc.stdin.flush()

    def results(self, timeout: float = scaled(20.0)) -> dict[str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.communicate(timeout=scaled(10))


@pytest.fixture
def hb_listener() -> Iterator[sk.Listener]:
    with sk.listen(("127.0.0.1", 0), heartbeat=HB) as srv:
        yield srv


def _pair(srv: sk.Listener, role: str, *extra: str) -> tuple[Peer, sk.Connection]:
    peer = Peer(role, srv.address, *extra)
    conn = srv.accept(timeout=scaled(10.0))
    assert peer.line() == "ready"
    return peer, conn


def test_idle_connection_stays_alive_and_measures_latency(hb_listener: sk.Listener) -> None:
    t_start = time.monotonic()
    peer, conn = _pair(hb_listener, "idle", "--max-seconds", str(4 * TIMEOUT + scaled(5)))
    with conn:
        # nobody calls anything on either side for 3x the timeout
        time.sleep(3 * TIMEOUT)
        stats = conn.heartbeat_stats
        assert not stats["peer_dead"]
        assert wait_until(lambda: conn.heartbeat_stats["pings_received"]
                          + conn.heartbeat_stats["pongs_received"] >= 3, timeout=TIMEOUT)
        # a round trip measured on this connection: positive, and shorter
        # than the connection has existed (the figure itself is printed)
        assert conn.latency is not None
        assert 0 < conn.latency < time.monotonic() - t_start
        print(f"heartbeat latency {conn.latency * 1e6:.0f} us")
        conn.send(b"still there?")
        assert not conn.heartbeat_stats["peer_dead"]
    peer.stop()


def test_peer_busy_in_python_stays_alive(hb_listener: sk.Listener) -> None:
    """The peer's beats come from its C hub thread, not from Python code."""
    peer, conn = _pair(hb_listener, "busy", "--max-seconds", str(4 * TIMEOUT + scaled(5)))
    with conn:
        with pytest.raises(sk.Timeout):
            conn.recv(timeout=3 * TIMEOUT)  # nothing sent, but no PeerDead
        assert not conn.heartbeat_stats["peer_dead"]
    peer.stop()


def test_sigkill_is_detected_at_once(hb_listener: sk.Listener) -> None:
    peer, conn = _pair(hb_listener, "idle")
    with conn:
        box: dict[str, object] = {}

        def blocked_recv() -> None:
            try:
                conn.recv()
            except sk.Error as exc:
                box["exc"], box["t"] = exc, time.monotonic()

        t = threading.Thread(target=blocked_recv)
        t.start()
        wait_blocked_on_socket(t)
        t0 = time.monotonic()
        peer.proc.kill()
        t.join(scaled(5))
        # FIN/RST, not the heartbeat: that would be PeerDead, after TIMEOUT
        assert isinstance(box.get("exc"), sk.ConnectionClosed), box
        assert not isinstance(box.get("exc"), sk.PeerDead), box
        assert not conn.heartbeat_stats["peer_dead"]
        assert float(box["t"]) - t0 < TIMEOUT  # type: ignore[arg-type]
    peer.stop()


@pytest.mark.parametrize("pending", ["recv", "send", "request", "none"])
def test_sigstop_is_detected_within_interval_plus_timeout(hb_listener: sk.Listener, pending: str) -> None:
    peer, conn = _pair(hb_listener, "echo")
    bound = DETECT_BOUND
    wait = bound + scaled(5.0)  # longer than the bound: a miss shows as a failed bound
    with conn:
        assert conn.request(b"warm-up", timeout=scaled(2.0)) == b"warm-up"
        t0 = time.monotonic()
        peer.proc.send_signal(signal.SIGSTOP)
        try:
            if pending == "none":
                wait_until(lambda: conn.heartbeat_stats["peer_dead"], timeout=wait, interval=0.01)
                assert conn.heartbeat_stats["peer_dead"]
                detected = time.monotonic() - t0
            else:
                with pytest.raises(sk.PeerDead):
                    if pending == "recv":
                        conn.recv(timeout=wait)
                    elif pending == "request":
                        conn.request(b"are you there", timeout=wait)
                    else:  # a big send blocks once the frozen peer's window closes
                        conn.send_many([b"x" * 65536] * 512, timeout=wait)
                detected = time.monotonic() - t0
            print(f"{pending}: SIGSTOP detected after {detected:.3f} s (TIMEOUT {TIMEOUT} s)")
            # the last beat came before t0, so detection is at most TIMEOUT
            # after t0; the bound adds an interval and 10% of slack
            assert detected < bound, f"detected after {detected:.3f} s, bound {bound:.3f} s"
            with pytest.raises(sk.PeerDead):  # and so does the next call
                conn.recv(timeout=scaled(1.0))
            with pytest.raises(sk.PeerDead):
                conn.send(b"x", timeout=scaled(1.0))
        finally:
            peer.stop()


@pytest.mark.parametrize("heartbeat", [True, False])
def test_peer_that_stops_reading_blocks_sender_loses_nothing(heartbeat: bool) -> None:
    srv = sk.listen(("127.0.0.1", 0), heartbeat=HB if heartbeat else None)
    with srv:
        # the peer reads nothing until we tell it to, after our send has
        # been blocked for 2 x TIMEOUT, well past the heartbeat timeout
        send_wait = 2 * TIMEOUT
        peer, conn = _pair(srv, "noread" if heartbeat else "noread-plain", "--read-on-stdin",
                           "--max-seconds", str(scaled(30)))
        try:
            chunk = os.urandom(65536)
            digest = hashlib.sha256()
            sent = 0
            with conn:
                with pytest.raises(sk.Timeout) as ei:
                    for _ in range(4096):  # bounded: 256 MiB at most
                        conn.send(chunk, timeout=send_wait)
                        digest.update(chunk)
                        sent += 1
                # the frame cut by the timeout is sent whole later: count it
                if getattr(ei.value, "sent", 0):
                    digest.update(chunk)
                    sent += 1
                # no PeerDead: the peer keeps beating and its kernel holds unread bytes
                assert not conn.heartbeat_stats["peer_dead"]
                assert sent > 0
                peer.go_read()
                conn.flush(timeout=scaled(15.0))
            res = peer.results()
        finally:
            peer.stop()
    assert int(res["frames"]) == sent
    assert int(res["bytes"]) == sent * len(chunk)
    assert res["sha256"] == digest.hexdigest()


def test_heartbeats_never_surface_as_messages(hb_listener: sk.Listener) -> None:
    peer, conn = _pair(hb_listener, "echo")
    with conn:
        for i in range(6):
            assert conn.request(b"m%d" % i, timeout=scaled(2.0)) == b"m%d" % i
            time.sleep(1.5 * INTERVAL)  # idle long enough for beats to flow
        assert wait_until(lambda: conn.heartbeat_stats["pongs_received"]
                          + conn.heartbeat_stats["pings_received"] > 0, timeout=TIMEOUT)
        with pytest.raises(sk.Timeout):
            conn.recv(timeout=3 * INTERVAL)  # only beats arrive: none is returned
    peer.stop()


def test_plain_connections_stay_byte_for_byte_plain() -> None:
    """Without heartbeats nothing but [length][payload] goes on the wire."""
    import socket

    with sk.listen(("127.0.0.1", 0)) as srv, socket.create_connection(srv.address) as raw:
        with srv.accept(timeout=scaled(5)) as conn:
            time.sleep(0.3)
            conn.send(b"abc")
            raw.settimeout(scaled(2))
            assert raw.recv(100) == b"\x00\x00\x00\x03abc"


def test_heartbeat_validation() -> None:
    with pytest.raises(ValueError):
        sk.Heartbeat(interval=0)
    with pytest.raises(ValueError):
        sk.Heartbeat(interval=2.0, timeout=1.0)
    with pytest.raises(ValueError):
        sk.Keepalive(idle=0)


def test_keepalive_options_are_set() -> None:
    import socket

    ka = sk.Keepalive(idle=7, interval=2, count=4, user_timeout=9.5)
    with sk.listen(("127.0.0.1", 0)) as srv:
        with sk.connect(srv.address, keepalive=ka) as conn, srv.accept(timeout=scaled(5)):
            s = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 9500
            finally:
                s.close()


# ------------------------------------------------------------- netns link cut

def _netns_available() -> Optional[str]:
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs as root)"
    name = f"sktest{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 10.213.0.1 <-> .2.
    Both ends live in namespaces this test creates and deletes."""
    why = _netns_available()
    if why:
        pytest.skip(why)
    a, b = f"ska{os.getpid()}", f"skb{os.getpid()}"
    cmds = [
        ["ip", "netns", "add", a],
        ["ip", "netns", "add", b],
        ["ip", "link", "add", "skva", "netns", a, "type", "veth", "peer", "name", "skvb", "netns", b],
        ["ip", "-n", a, "addr", "add", "10.213.0.1/24", "dev", "skva"],
        ["ip", "-n", b, "addr", "add", "10.213.0.2/24", "dev", "skvb"],
        ["ip", "-n", a, "link", "set", "skva", "up"],
        ["ip", "-n", b, "link", "set", "skvb", "up"],
        ["ip", "-n", a, "link", "set", "lo", "up"],
        ["ip", "-n", b, "link", "set", "lo", "up"],
    ]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


def test_link_cut_in_netns_is_detected(two_hosts: tuple[str, str]) -> None:
    a, b = two_hosts
    env = child_env()
    server = subprocess.Popen(
        ["ip", "netns", "exec", a, sys.executable, PEER, "server", "10.213.0.1", "0",
         str(INTERVAL), str(TIMEOUT), "--max-seconds", str(scaled(20))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    client: Optional[subprocess.Popen[str]] = None
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split()[1]
        client = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, PEER, "idle", "10.213.0.1", port,
             str(INTERVAL), str(TIMEOUT), "--max-seconds", str(scaled(20))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert server.stdout.readline().strip() == "ready"
        time.sleep(2 * INTERVAL)
        subprocess.run(["ip", "-n", b, "link", "set", "skvb", "down"], check=True)
        line = server.stdout.readline().split()
        assert line[:2] == ["result", "PeerDead"], line
        assert float(line[2]) < DETECT_BOUND + 2 * INTERVAL
    finally:
        for p in (server, client):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.communicate(timeout=scaled(10))
