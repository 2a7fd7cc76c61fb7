"""The heartbeat rule and the wire constants as _core exports them
(csrc/binding/heartbeat.c, frame.c; the rule is csrc/core/heartbeat.c
sk_hb_tick, which the hub thread applies to threaded connections).

pysockkit.aio and any other driver that keeps its own clocks ask
``_core.HeartbeatRule`` instead of carrying a copy of the rule, and read
the wire constants from ``_core`` instead of copying them.
"""

from __future__ import annotations

import math

import pytest

import pysockkit as sk
from pysockkit import _core

CHECK, ALIVE, DEAD = _core.HB_CHECK, _core.HB_ALIVE, _core.HB_DEAD
PONG, PING = _core.HB_PONG, _core.HB_PING


def test_a_fresh_connection_pings_after_one_interval() -> None:
    rule = _core.HeartbeatRule(1.0, 3.0, True)
    assert (rule.interval, rule.timeout, rule.ping_after) == (1.0, 3.0, 1.0)
    t0 = 500.0
    rtt_at = rule.first_rtt_at(t0)
    assert rtt_at == t0 - (_core.HB_RTT_EVERY - 1) * 1.0
    assert rule.tick(t0, t0, t0, rtt_at) == (0, t0 + 1.0)
    actions, due = rule.tick(t0 + 1.0, t0, t0, rtt_at)
    assert actions == PING
    # the PING went out; the round-trip sample is still due until its PONG:
    # look again interval / 8 later, not in a busy loop
    assert rule.tick(t0 + 1.0, t0, t0 + 1.0, rtt_at) == (PING, t0 + 1.125)
    # the PONG came back: next PING one interval after the last send
    assert rule.tick(t0 + 1.0, t0 + 1.0, t0 + 1.0, t0 + 1.0) == (0, t0 + 2.0)


def test_the_accepting_side_waits_one_and_a_half_intervals() -> None:
    rule = _core.HeartbeatRule(1.0, 3.0, initiator=False)
    assert rule.ping_after == 1.5
    assert rule.tick(11.0, 10.0, 10.0, 10.0) == (0, 11.5)
    assert rule.tick(11.5, 10.0, 10.0, 10.0)[0] == PING
    assert rule.tick(11.0, 10.0, 10.0, 10.0, pong_owed=True)[0] == PONG
    # a side whose PINGs are not needed still samples the round trip
    every = _core.HB_RTT_EVERY
    assert rule.tick(10.0 + every, 10.0 + every, 10.0 + every, 10.0)[0] == PING


def test_an_overdue_peer_is_checked_then_alive_or_dead() -> None:
    rule = _core.HeartbeatRule(1.0, 2.0, True)
    now = 100.0
    last_rx = now - 2.0
    assert rule.tick(now - 0.5, last_rx, now - 0.5, now - 0.5) == (0, now)
    assert rule.tick(now, last_rx, now, now)[0] == CHECK  # unread not known
    assert rule.tick(now, last_rx, now, now, unread=-1)[0] == CHECK
    actions, due = rule.tick(now, last_rx, now, now, unread=5)
    assert actions == ALIVE and due == now + 1.0  # as if just received
    assert rule.tick(now, last_rx, now, now, unread=0) == (DEAD, math.inf)
    assert rule.tick(now + 60, last_rx, now, now, dead=True, unread=0) == (0, math.inf)
    # after the peer's end of stream its silence proves nothing
    assert rule.tick(now, last_rx, now, now, rx_done=True, unread=0) == (0, now + 1.0)


@pytest.mark.parametrize("bad", [(0.0, 1.0), (1.0, -1.0), (float("nan"), 1.0)])
def test_bad_parameters_are_refused(bad: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        _core.HeartbeatRule(bad[0], bad[1], True)


def test_bad_times_are_refused() -> None:
    rule = _core.HeartbeatRule(1.0, 3.0, True)
    with pytest.raises(ValueError, match="now must be a finite number"):
        rule.tick(float("inf"), 0.0, 0.0, 0.0)
    with pytest.raises(TypeError):
        rule.tick("soon", 0.0, 0.0, 0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing required argument 'rtt_at'"):
        rule.tick(1.0, 0.0, 0.0)  # type: ignore[call-arg]


@pytest.mark.parametrize("header_size", [1, 2, 4, 8])
def test_control_frames_have_the_exported_sizes(header_size: int) -> None:
    enc = _core.Encoder(header_size=header_size, control=True)
    dec = _core.Decoder(header_size=header_size, control=True)
    ping = enc.control(_core.CTL_PING, 123456789, -1)
    pong = enc.control(_core.CTL_PONG, 123456789)
    assert len(ping) == header_size + _core.CTL_PING_LEN
    assert len(pong) == header_size + _core.CTL_PONG_LEN
    assert dec.feed(ping + pong) == []
    body_ping, body_pong = dec.take_control()
    assert body_ping[0] == _core.CTL_PING and len(body_ping) == _core.CTL_PING_LEN
    assert int.from_bytes(body_ping[9:13], "big") == _core.CTL_RTT_UNKNOWN
    assert body_pong[0] == _core.CTL_PONG and len(body_pong) == _core.CTL_PONG_LEN
    assert _core.CTL_PING_LEN <= _core.CONTROL_MAX


@pytest.mark.parametrize("header_size", [1, 2, 4, 8])
@pytest.mark.parametrize("correlation", [False, True])
def test_framing_limit_is_what_framing_allows(header_size: int, correlation: bool) -> None:
    limit = _core.framing_limit(header_size, correlation=correlation)
    framing = sk.Framing(header_size=header_size, correlation=correlation)
    assert framing.max_frame == min(16 * 2**20, limit)
    if limit < 2**63:
        with pytest.raises(ValueError):
            sk.Framing(header_size=header_size, max_frame=limit + 1, correlation=correlation)
    assert _core.framing_limit(header_size, control=True) == (2 ** (8 * header_size) - 1) >> 1
    assert _core.framing_limit(3) == 0


def test_a_correlated_frame_carries_an_id_of_id_len_bytes() -> None:
    enc = _core.Encoder(header_size=4, correlation=True)
    wire = enc.encode(b"abc", (7 & _core.ID_MASK) | _core.ID_REPLY)
    assert len(wire) == 4 + _core.ID_LEN + 3
    dec = _core.Decoder(header_size=4, correlation=True)
    ((rid, payload),) = dec.feed(wire)
    assert rid & _core.ID_REPLY and not rid & _core.ID_ERROR
    assert (rid & _core.ID_MASK, payload) == (7, b"abc")
