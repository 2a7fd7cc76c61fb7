"""sk.tcp_info / sk.TcpInfo / sk.TcpState on real loopback sockets.

Only stdlib sockets are used, so these tests do not depend on the
connection API.  Every socket is closed (pytest runs with
filterwarnings=error).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
import time

import pytest

import pysockkit as sk
from pysockkit import _core
from helpers import (
    STEP_TIMEOUT,
    TCP_INFO_BITS,
    TCP_INFO_CLOCKS,
    TCP_INFO_LAYOUT,
    decode_tcp_info,
    tcp_info_raw,
    wait_until,
)


@pytest.fixture
def pair(closer):
    """(listener, client, server) stdlib sockets over 127.0.0.1."""
    srv = closer.add(socket.create_server(("127.0.0.1", 0)))
    cli = closer.add(socket.create_connection(srv.getsockname(), timeout=STEP_TIMEOUT))
    conn, _ = srv.accept()
    closer.add(conn)
    conn.settimeout(STEP_TIMEOUT)
    return srv, cli, conn


# ----------------------------------------------------------------- TcpState


def test_tcp_state_numbering_is_linux():
    expected = {
        "ESTABLISHED": 1, "SYN_SENT": 2, "SYN_RCVD": 3, "FIN_WAIT_1": 4,
        "FIN_WAIT_2": 5, "TIME_WAIT": 6, "CLOSED": 7, "CLOSE_WAIT": 8,
        "LAST_ACK": 9, "LISTEN": 10, "CLOSING": 11, "NEW_SYN_RECV": 12,
    }
    assert {s.name: int(s) for s in sk.TcpState} == expected
    # kernel names agree with the C table
    for s in sk.TcpState:
        assert s.kernel_name == _core.tcp_state_name(int(s))
    assert sk.TcpState.SYN_RCVD.kernel_name == "SYN_RECV"
    assert sk.TcpState.CLOSED.kernel_name == "CLOSE"
    assert sk.TcpState.FIN_WAIT_2.kernel_name == "FIN_WAIT2"


def test_tcp_state_names_and_descriptions():
    assert sk.TcpState.ESTABLISHED.ss_name == "ESTAB"
    assert sk.TcpState.SYN_RCVD.ss_name == "SYN-RECV"
    assert sk.TcpState.CLOSED.ss_name == "UNCONN"
    for s in sk.TcpState:
        d = s.description
        assert d and "\n" not in d and len(d) < 100
    assert len({s.description for s in sk.TcpState}) == len(sk.TcpState)
    assert sk.TcpState.from_name("time-wait") is sk.TcpState.TIME_WAIT
    assert sk.TcpState.from_name("ESTAB") is sk.TcpState.ESTABLISHED
    assert sk.TcpState.from_name("syn_recv") is sk.TcpState.SYN_RCVD
    assert sk.TcpState.from_name("close") is sk.TcpState.CLOSED
    assert sk.TcpState.from_name("FIN_WAIT1") is sk.TcpState.FIN_WAIT_1
    with pytest.raises(ValueError):
        sk.TcpState.from_name("BOGUS")


# ------------------------------------------------------------------ tcp_info


def test_listener_is_listen(closer):
    srv = closer.add(socket.create_server(("127.0.0.1", 0), backlog=7))
    info = sk.tcp_info(srv)
    assert isinstance(info, sk.TcpInfo)
    assert info.state is sk.TcpState.LISTEN
    assert _core.tcp_state(srv.fileno()) == 10
    # an int fd and any object with fileno() work too
    assert sk.tcp_info(srv.fileno()).state is sk.TcpState.LISTEN

    class Holder:
        def fileno(self) -> int:
            return srv.fileno()

    assert sk.tcp_info(Holder()).state is sk.TcpState.LISTEN


def test_fresh_socket_is_closed(closer):
    s = closer.add(socket.socket())
    assert sk.tcp_info(s).state is sk.TcpState.CLOSED


def test_established_fields_and_units(pair):
    _srv, cli, _conn = pair
    info = sk.tcp_info(cli)
    assert info.state is sk.TcpState.ESTABLISHED
    assert info.kernel_len >= 104
    assert info.rtt_us is not None and info.rtt_us > 0
    assert info.rto_us is not None and info.rto_us >= 200_000  # TCP_RTO_MIN
    assert info.snd_mss_bytes is not None and info.snd_mss_bytes > 0
    assert info.snd_cwnd_segs is not None and info.snd_cwnd_segs >= 1
    assert info.ca_state_name == "Open"
    assert {"timestamps", "sack", "wscale"} <= set(info.option_names)
    assert info.last_data_recv_ms is not None
    # raw dict: kernel names, present fields only, plus _len
    raw = _core.tcp_info(cli.fileno())
    assert raw["_len"] == info.kernel_len
    assert set(raw) - {"_len"} <= set(_core.tcp_info_fields())
    assert raw["state"] == 1 and "rtt" in raw and "_len" in raw


def test_fields_match_a_reference_decoding_of_the_kernel_bytes(pair):
    """Every field of sk.tcp_info against the bytes the stdlib's
    getsockopt(TCP_INFO) returns, decoded by helpers.decode_tcp_info (struct
    codes written from the uapi header, not from csrc/tcpinfo.c): present
    exactly when the kernel returned it, None otherwise, and equal in value."""
    _srv, cli, conn = pair
    cli.sendall(b"x" * 3000)  # some traffic, so the counters are not all 0
    got = 0
    while got < 3000:
        got += len(conn.recv(65536))
    conn.sendall(b"y" * 500)
    assert len(cli.recv(65536)) > 0
    from pysockkit._observe import _INFO_FIELDS

    field_of = {key: name for name, key, _group, _unit in _INFO_FIELDS}
    # read the kernel, then pysockkit, then the kernel again, until nothing
    # but the "ms ago" clocks moved in between (an ACK may still be on its way)
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        before = decode_tcp_info(tcp_info_raw(cli))
        info = sk.tcp_info(cli)
        raw = tcp_info_raw(cli)
        after = decode_tcp_info(raw)
        if all(before[k] == after[k] for k in before if k not in TCP_INFO_CLOCKS):
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.01)
    assert info.kernel_len == len(raw)
    assert set(before) == {k for k, off, code in TCP_INFO_LAYOUT
                           if off + struct.calcsize(code) <= len(raw)} | {
        k for k, byte, _s, _w in TCP_INFO_BITS if byte < len(raw)}
    assert before["state"] == 1 and before["rtt"] > 0  # the decoder reads real values
    full = info.as_dict(include_absent=True)
    for key, value in before.items():
        mine = full[field_of[key]]
        assert mine is not None, key
        if key in TCP_INFO_CLOCKS:
            assert value <= mine <= after[key], (key, value, mine, after[key])
        else:
            assert int(mine) == value, (key, mine, value)
    # a field the kernel did not return is None, never 0
    laid_out = {k for k, _o, _c in TCP_INFO_LAYOUT} | {k for k, _b, _s, _w in TCP_INFO_BITS}
    for key in laid_out - set(before):
        assert full[field_of[key]] is None, key
    # the last 4 bytes: 6.18 returns the u16 AccECN pair; 7.0's bitfield names are absent
    if int(os.uname().release.split(".")[0]) < 7 and info.kernel_len >= 280:
        (fail_mode, opt_seen) = struct.unpack_from("=HH", raw, 276)
        assert (info.accecn_fail_mode, info.accecn_opt_seen) == (fail_mode, opt_seen)
        assert info.ecn_mode is None
    # as_dict() leaves absent fields out
    assert all(v is not None for v in info.as_dict().values())
    assert info.as_dict()["kernel_len"] == info.kernel_len


def test_bytes_acked_counts_the_syn(pair):
    _srv, cli, conn = pair
    n = 50_000
    cli.sendall(b"x" * n)
    got = 0
    while got < n:
        chunk = conn.recv(65536)
        assert chunk
        got += len(chunk)
    # tcpi_bytes_acked is snd_una - ISN: the SYN's sequence number counts,
    # so N bytes of data read and ACKed show as N + 1
    assert wait_until(lambda: sk.tcp_info(cli).bytes_acked == n + 1, timeout=STEP_TIMEOUT)
    info = sk.tcp_info(cli)
    assert info.bytes_sent == n
    assert info.segs_out is not None and info.data_segs_out is not None
    assert info.data_segs_out >= 1
    peer = sk.tcp_info(conn)
    assert peer.bytes_received == n
    assert peer.data_segs_in is not None and peer.data_segs_in >= 1


def test_close_wait_and_closed_with_kept_fd(pair):
    _srv, cli, conn = pair
    cli.shutdown(socket.SHUT_WR)  # we send FIN first
    assert wait_until(lambda: sk.tcp_info(conn).state is sk.TcpState.CLOSE_WAIT)
    assert wait_until(lambda: sk.tcp_info(cli).state is sk.TcpState.FIN_WAIT_2)
    conn.shutdown(socket.SHUT_WR)
    # the first closer is in TIME_WAIT, but TCP_INFO on a kept fd says CLOSE
    assert wait_until(lambda: sk.tcp_info(cli).state is sk.TcpState.CLOSED)


def test_errors(closer):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError):  # fileno() is -1
        sk.tcp_info(s)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as ei:
            sk.tcp_info(r)
        assert ei.value.errno == errno.ENOTSOCK
        assert isinstance(ei.value, sk.Error)
        assert "getsockopt(TCP_INFO)" in str(ei.value)
        with pytest.raises(OSError):
            _core.tcp_state(r)
    finally:
        os.close(r)
        os.close(w)
    u = closer.add(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with pytest.raises(OSError):
        sk.tcp_info(u)
    with pytest.raises(TypeError):
        sk.tcp_info("not a socket")


def test_tcpinfo_is_frozen_and_slotted(pair):
    _srv, cli, _conn = pair
    info = sk.tcp_info(cli)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.rtt_us = 1  # type: ignore[misc]
    assert not hasattr(info, "__dict__")
    assert sk.TcpInfo().state is None and sk.TcpInfo().kernel_len == 0


def test_repr_html_grouped_with_units(pair):
    _srv, cli, _conn = pair
    h = sk.tcp_info(cli)._repr_html_()
    for text in ("Timers &amp; RTT", "Window &amp; congestion", "Totals",
                 "rtt_us", "µs", "bytes/s", "ESTABLISHED (1)"):
        assert text in h
    assert h.count("<tr>") > 20


def test_rst_peer_sees_closed(pair):
    _srv, cli, conn = pair
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()
    assert wait_until(lambda: sk.tcp_info(conn).state is sk.TcpState.CLOSED)
