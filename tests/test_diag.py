"""sk.sockets / sk.SocketEntry / find_socket (sock_diag) on real loopback
sockets made with the stdlib, cross-checked against ``ss -tan``.

The dump sees every TCP socket of the network namespace, and a fresh port
may still carry TIME_WAIT sockets of an earlier test or of another process.
So the tests check (1) that every returned entry satisfies the filter and
(2) which of *our own* 4-tuples came back -- never bare counts.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import struct
import subprocess

import pytest

import pysockkit as sk
from pysockkit import _core
from pysockkit._observe import SocketList, find_socket
from helpers import STEP_TIMEOUT, scaled, wait_until


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6()


Key = tuple[tuple[str, int], tuple[str, int]]


def _key(e: sk.SocketEntry) -> Key:
    return (e.local, e.remote)


def _keys(entries, mine: set[Key]) -> set[Key]:
    """The 4-tuples among entries that are ours."""
    return {_key(e) for e in entries} & mine


def _tuples(srv, *conns) -> dict[str, Key]:
    """4-tuples of a listener ("lst") and connected sockets ("c0", "c1"...)."""
    out = {"lst": (srv.getsockname()[:2], ("0.0.0.0", 0))}
    for i, c in enumerate(conns):
        out[f"c{i}"] = (c.getsockname()[:2], c.getpeername()[:2])
    return out


@pytest.fixture
def pair(closer):
    """(listener, client, server, port) over 127.0.0.1."""
    srv = closer.add(socket.create_server(("127.0.0.1", 0), backlog=9))
    port = srv.getsockname()[1]
    cli = closer.add(socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT))
    conn, _ = srv.accept()
    closer.add(conn)
    return srv, cli, conn, port


# --------------------------------------------------------------- basics


def test_listener_entry(closer):
    srv = closer.add(socket.create_server(("127.0.0.1", 0), backlog=9))
    port = srv.getsockname()[1]
    found = sk.sockets(state="LISTEN", local_port=port)
    assert isinstance(found, SocketList) and len(found) == 1
    e = found[0]
    assert isinstance(e, sk.SocketEntry)
    assert e.family == socket.AF_INET
    assert e.state is sk.TcpState.LISTEN
    assert e.local == ("127.0.0.1", port)
    assert e.remote == ("0.0.0.0", 0)
    assert e.inode > 0
    assert e.uid == os.getuid()
    assert e.send_q == 9 and e.recv_q == 0  # backlog, accept queue
    assert e.timer == "none" and e.info is None
    assert e.cookie == struct.unpack("Q", srv.getsockopt(socket.SOL_SOCKET, 57, 8))[0]
    assert not e.is_request
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.inode = 0  # type: ignore[misc]


def test_pair_and_info(pair):
    srv, cli, conn, port = pair
    t = _tuples(srv, cli, conn)
    mine = set(t.values())
    found = sk.sockets(port=port)
    assert all(port in (e.local[1], e.remote[1]) for e in found)
    assert _keys(found, mine) == mine
    states = {_key(e): e.state for e in found if _key(e) in mine}
    assert states[t["lst"]] is sk.TcpState.LISTEN
    assert states[t["c0"]] is states[t["c1"]] is sk.TcpState.ESTABLISHED
    est = sk.sockets(state=sk.TcpState.ESTABLISHED, port=port, info=True)
    assert all(e.state is sk.TcpState.ESTABLISHED for e in est)
    assert _keys(est, mine) == {t["c0"], t["c1"]}
    ends = {_key(e): e for e in est}
    c = ends[t["c0"]]
    assert c.info is not None and c.info.state is sk.TcpState.ESTABLISHED
    assert c.info.rtt_us is not None and c.info.kernel_len >= 104
    # the accept queue shows up on the listener
    extra = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    try:
        [lst] = sk.sockets(state="LISTEN", local_port=port)
        assert lst.recv_q == 1
    finally:
        extra.close()


def test_filters(pair):
    srv, cli, conn, port = pair
    t = _tuples(srv, cli, conn)
    mine = set(t.values())
    lst, c, s = t["lst"], t["c0"], t["c1"]
    cport = cli.getsockname()[1]

    def check(result, pred, expected):
        assert all(pred(e) for e in result)
        assert _keys(result, mine) == set(expected)

    check(sk.sockets(local_port=port), lambda e: e.local[1] == port, {lst, s})
    check(sk.sockets(remote_port=port), lambda e: e.remote[1] == port, {c})
    check(sk.sockets(local_port=cport, remote_port=port),
          lambda e: e.local[1] == cport and e.remote[1] == port, {c})
    check(sk.sockets(state=["LISTEN", sk.TcpState.ESTABLISHED], port=port),
          lambda e: e.state in (sk.TcpState.LISTEN, sk.TcpState.ESTABLISHED),
          {lst, c, s})
    check(sk.sockets(state={1}, port=port),
          lambda e: e.state is sk.TcpState.ESTABLISHED, {c, s})
    check(sk.sockets(state="TIME_WAIT", port=port),
          lambda e: e.state is sk.TcpState.TIME_WAIT, set())
    check(sk.sockets(port=port, family=socket.AF_INET),
          lambda e: e.family == socket.AF_INET, {lst, c, s})
    check(sk.sockets(port=port, family=6),
          lambda e: e.family == socket.AF_INET6, set())
    check(sk.sockets(port=port, family="ipv4"),
          lambda e: e.family == socket.AF_INET, {lst, c, s})
    check(sk.sockets(port=port, address="127.0.0.1"),
          lambda e: "127.0.0.1" in (e.local[0], e.remote[0]), {lst, c, s})
    assert sk.sockets(port=port, address="127.0.0.2") == []
    check(sk.sockets(port=port, remote_address="0.0.0.0"),
          lambda e: e.remote[0] == "0.0.0.0", {lst})
    check(sk.sockets(port=port, local_address="127.0.0.1", remote_address="127.0.0.1"),
          lambda e: e.local[0] == e.remote[0] == "127.0.0.1", {c, s})
    assert len(sk.sockets(port=port, limit=1)) == 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        sk.sockets(state="BOGUS")
    with pytest.raises(ValueError):
        sk.sockets(state=99)
    with pytest.raises(ValueError):
        sk.sockets(state=[])
    with pytest.raises(ValueError):
        sk.sockets(port=70000)
    with pytest.raises(ValueError):
        sk.sockets(local_port=-1)
    with pytest.raises(ValueError):
        sk.sockets(family=socket.AF_UNIX)
    with pytest.raises(ValueError):
        sk.sockets(address="localhost")
    with pytest.raises(ValueError):
        sk.sockets(limit=-1)
    with pytest.raises(ValueError):
        _core.diag_dump(family=1)
    with pytest.raises(ValueError):
        _core.diag_dump(src="not-an-address")


# --------------------------------------------------- states without an fd


def test_time_wait_after_active_close(closer):
    srv = closer.add(socket.create_server(("127.0.0.1", 0)))
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    conn, _ = srv.accept()
    here = cli.getsockname()
    cli.close()  # the active closer closes first ...
    conn.close()  # ... then the peer: the TIME_WAIT is the client's
    def tws(**kw):
        return sk.sockets(state=sk.TcpState.TIME_WAIT, local_port=here[1],
                          remote_port=port, **kw)

    assert wait_until(lambda: len(tws()) == 1)
    [tw] = tws(info=True)
    assert tw.local == here and tw.remote == ("127.0.0.1", port)
    assert tw.inode == 0
    assert tw.timer == "time_wait"
    assert 60.0 - scaled(10.0) < tw.expires_s <= 62.0  # 60 s, less the time it took us
    assert tw.info is None  # the kernel has no tcp_info for a TIME_WAIT sock
    # the exact lookup sees it too
    e = find_socket(here, ("127.0.0.1", port))
    assert e is not None and e.state is sk.TcpState.TIME_WAIT


def test_request_socket_with_defer_accept(closer):
    # STATES.md: TCP_DEFER_ACCEPT on the listener; the client connects and
    # sends nothing; the server drops the bare third ACK, so a request
    # socket stays (state 3, inode 0) while the client is ESTABLISHED.
    srv = closer.add(socket.socket())
    srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = closer.add(socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT))
    assert sk.tcp_info(cli).state is sk.TcpState.ESTABLISHED
    assert wait_until(lambda: len(sk.sockets(state="SYN_RCVD", local_port=port)) == 1)
    [req] = sk.sockets(state=sk.TcpState.SYN_RCVD, local_port=port)
    assert req.state is sk.TcpState.SYN_RCVD  # reported as 3, never 12
    assert req.inode == 0 and req.is_request
    assert req.remote == cli.getsockname()
    # asking for NEW_SYN_RECV finds the same request socket
    [req12] = sk.sockets(state=sk.TcpState.NEW_SYN_RECV, local_port=port)
    assert req12.remote == req.remote
    assert "(request)" in SocketList([req])._repr_html_()


def test_bound_inactive_is_closed(closer):
    s = closer.add(socket.socket())
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    me = (s.getsockname(), ("0.0.0.0", 0))
    # not part of "all states" ...
    assert me not in {_key(e) for e in sk.sockets(local_port=port)}
    # ... but asking for CLOSED reports bound, never-connected sockets
    # (Linux >= 6.8)
    found = [e for e in sk.sockets(state=sk.TcpState.CLOSED, local_port=port)
             if _key(e) == me]
    assert [e.state for e in found] == [sk.TcpState.CLOSED]
    assert found[0].inode > 0


# ------------------------------------------------------------------ IPv6


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_ipv6_loopback(closer):
    srv = closer.add(socket.create_server(("::1", 0), family=socket.AF_INET6))
    port = srv.getsockname()[1]
    cli = closer.add(socket.create_connection(("::1", port), timeout=STEP_TIMEOUT))
    conn, _ = srv.accept()
    closer.add(conn)
    mine = {(srv.getsockname()[:2], ("::", 0)),
            (cli.getsockname()[:2], cli.getpeername()[:2]),
            (conn.getsockname()[:2], conn.getpeername()[:2])}
    found = sk.sockets(port=port, family=socket.AF_INET6)
    assert all(e.family == socket.AF_INET6 for e in found)
    assert _keys(found, mine) == mine
    [lst] = sk.sockets(state="LISTEN", local_port=port)
    assert lst.local == ("::1", port) and lst.remote == ("::", 0)
    assert _keys(sk.sockets(port=port, family=socket.AF_INET), mine) == set()
    assert _keys(sk.sockets(port=port, address="::1"), mine) == mine
    c = find_socket(cli.getsockname()[:2], ("::1", port))
    assert c is not None and c.state is sk.TcpState.ESTABLISHED
    assert "[::1]:" in str(found)


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6")
def test_dual_stack_mapped_addresses(closer):
    srv = closer.add(socket.socket(socket.AF_INET6))
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = closer.add(socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT))
    conn, _ = srv.accept()
    closer.add(conn)
    server_key = (conn.getsockname()[:2], conn.getpeername()[:2])
    assert server_key[0][0] == "::ffff:127.0.0.1"
    [server_end] = [e for e in sk.sockets(state="ESTABLISHED", local_port=port)
                    if _key(e) == server_key]
    assert server_end.family == socket.AF_INET6
    # an IPv4 address filter matches the IPv4-mapped IPv6 address
    client_key = (cli.getsockname(), cli.getpeername())
    found = sk.sockets(state="ESTABLISHED", port=port, address="127.0.0.1")
    assert _keys(found, {server_key, client_key}) == {server_key, client_key}
    e = find_socket(("::ffff:127.0.0.1", port), cli.getsockname())
    assert e is not None and e.family == socket.AF_INET6


# ---------------------------------------------------------- exact lookup


def test_find_socket_and_listener_fallback(pair):
    srv, cli, conn, port = pair
    here, peer = conn.getsockname(), conn.getpeername()
    e = find_socket(here, peer, info=True)
    assert e is not None and e.state is sk.TcpState.ESTABLISHED
    assert e.info is not None and e.info.state is sk.TcpState.ESTABLISHED
    assert find_socket(here, peer, cookie=e.cookie) is not None
    assert find_socket(here, peer, cookie=e.cookie + 1) is None
    # abort the server end: the 4-tuple is gone but the listener is not.
    # The kernel answers with the listener; find_socket must say None.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert find_socket(here, peer) is None
    lst = find_socket(srv.getsockname(), ("0.0.0.0", 0))
    assert lst is not None and lst.state is sk.TcpState.LISTEN
    with pytest.raises(ValueError):
        find_socket(("127.0.0.1", 70000), peer)


# ----------------------------------------------------------- privileges


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop privileges")
def test_works_unprivileged(closer):
    srv = closer.add(socket.create_server(("127.0.0.1", 0)))
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, then dump and look up
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            found = sk.sockets(local_port=port)
            ok = (len(found) == 1 and found[0].state is sk.TcpState.LISTEN
                  and found[0].uid == 0
                  and find_socket(("127.0.0.1", port), ("0.0.0.0", 0)) is not None)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# --------------------------------------------------- ss -tan cross-check


def _ss_rows(port: int) -> set[tuple[str, str, str]]:
    out = subprocess.run(
        ["ss", "-Htan", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=True,
    ).stdout
    rows = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5:
            rows.add((f[0], f[3], f[4]))
    return rows


def _ss_addr(host: str, port: int) -> str:
    p = "*" if port == 0 else str(port)
    return f"[{host}]:{p}" if ":" in host else f"{host}:{p}"


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2 ss not installed")
def test_matches_ss_tan(pair):
    srv, cli, conn, port = pair
    # and a TIME_WAIT from a second, closed connection
    c2 = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    s2, _ = srv.accept()
    tw_key = (c2.getsockname(), c2.getpeername())
    c2.close()
    s2.close()
    assert wait_until(lambda: any(
        _key(e) == tw_key for e in sk.sockets(state="TIME_WAIT", port=port)))
    t = _tuples(srv, cli, conn)
    mine = {(_ss_addr(*a), _ss_addr(*b)) for a, b in list(t.values()) + [tw_key]}
    ours = sk.sockets(port=port)
    rows = set()
    for line in str(ours).splitlines()[1:]:
        f = line.split()
        if (f[3], f[4]) in mine:
            rows.add((f[0], f[3], f[4]))
    theirs = {r for r in _ss_rows(port) if (r[1], r[2]) in mine}
    assert rows == theirs
    assert len(rows) == 4
    assert {r[0] for r in rows} == {"LISTEN", "ESTAB", "TIME-WAIT"}
    header = str(ours).splitlines()[0].split()
    assert header[:3] == ["State", "Recv-Q", "Send-Q"]


def test_html_and_str(pair):
    _srv, _cli, _conn, port = pair
    found = sk.sockets(state=["LISTEN", "ESTABLISHED"], port=port, info=True)
    h = found._repr_html_()
    assert f"{len(found)} TCP sockets" in h
    assert "ESTABLISHED" in h and "rtt_us" in h
    assert "<table>" in found[0]._repr_html_()
    assert str(found[0]).split()[0] in ("LISTEN", "ESTAB")
    assert str(SocketList()).startswith("State")
    one = SocketList(found[:1])._repr_html_()
    assert "1 TCP socket<" in one
