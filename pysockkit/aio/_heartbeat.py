"""Heartbeats of an aio connection, on the event loop.

The rules of docs/heartbeat.md, decided by the C core's own rule
(``_core.HeartbeatRule``: csrc/core/heartbeat.c ``sk_hb_tick``, the one the
synchronous API's hub thread applies): a PING when nothing was sent for
``interval`` (the side that connected) or 1.5 x ``interval`` (the side
that accepted), a round-trip sample at least every ``RTT_EVERY``
intervals, any byte received counts as liveness, and the peer is dead when
nothing came for ``timeout``, unless our own kernel holds unread bytes
(then we are the ones not reading).  A loop blocked for longer than the
peer's timeout makes the peer declare us dead (the synchronous API's
beats come from a C thread instead).
"""

from __future__ import annotations

import asyncio
import termios
import time
from collections.abc import Callable
from typing import Any, Optional

from .. import _core
from .._errors import PeerDead
from .._types import Heartbeat
from .._wire import CTL_PING, CTL_PING_LEN, CTL_PONG, CTL_PONG_LEN, RTT_UNKNOWN
from ._receiver import Receiver
from ._transport import ioctl_int
from ._writer import Writer


class Beat:
    """The heartbeat of one connection (see the module docstring).

    Made with the connection; :meth:`start` arms it once the transport is
    up, :meth:`received` runs for every read (liveness and control
    frames), :meth:`stop` ends it.  A dead peer calls *on_dead* with the
    ``sk.PeerDead`` error (the connection fails everything and aborts).

    Example::

        beat = Beat(loop, sk.Heartbeat(1.0, 3.0), decoder, encoder, writer, receiver,
                    initiator=True, on_dead=conn_died)
        beat.start(fd)
    """

    __slots__ = ("loop", "cfg", "dec", "enc", "w", "rx", "initiator", "rule", "on_dead", "fd",
                 "handle", "last_rx", "rtt_ns", "rtt_at", "counts", "dead",
                 "stopped")

    def __init__(self, loop: asyncio.AbstractEventLoop, cfg: Heartbeat, dec: _core.Decoder,
                 enc: _core.Encoder, w: Writer, rx: Receiver, *, initiator: bool,
                 on_dead: Callable[[PeerDead], None]) -> None:
        self.loop = loop
        self.cfg = cfg
        self.dec = dec
        self.enc = enc
        self.w = w
        self.rx = rx
        self.initiator = initiator
        self.rule = _core.HeartbeatRule(cfg.interval, cfg.timeout, initiator)
        self.on_dead = on_dead
        self.fd = -1
        self.handle: Optional[asyncio.TimerHandle] = None
        self.last_rx = 0.0
        self.rtt_ns = -1
        self.rtt_at = 0.0
        self.counts = {"pings_sent": 0, "pongs_sent": 0, "pings_received": 0,
                       "pongs_received": 0, "unknown_control": 0}
        self.dead = False
        self.stopped = False
        w.track = True

    def start(self, fd: int) -> None:
        """The transport is up (fd may be -1 on loops that hide the socket)."""
        now = self.loop.time()
        self.fd = fd
        self.last_rx = self.w.last_tx = now
        self.rtt_at = self.rule.first_rtt_at(now)
        self.arm(now, self._ask(now)[1])

    def stop(self) -> None:
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _ask(self, now: float, unread: int = -1) -> tuple[int, float]:
        """The C rule's decision now (csrc/core/heartbeat.c, sk_hb_tick)."""
        return self.rule.tick(now, self.last_rx, self.w.last_tx, self.rtt_at,
                              rx_done=self.rx.eof, unread=unread)

    def arm(self, now: float, due: float) -> None:
        # a ping that could not go out (write side shut) is retried soon, not in a busy loop
        self.handle = self.loop.call_at(max(due, now + self.rule.interval / 8), self.tick)

    def tick(self) -> None:
        self.handle = None
        if self.stopped or self.dead:
            return
        w = self.w
        now = self.loop.time()
        actions, due = self._ask(now)
        if actions & _core.HB_CHECK:  # overdue: does our kernel hold unread bytes?
            unread = ioctl_int(self.fd, termios.FIONREAD) if self.fd >= 0 else 0
            actions, due = self._ask(now, unread)
        if actions & _core.HB_DEAD:
            self.dead = True
            self.on_dead(PeerDead(f"the peer sent nothing for {self.cfg.timeout} s (heartbeat "
                                  "timeout); the connection was aborted"))
            return
        if actions & _core.HB_ALIVE:
            # unread bytes in our kernel: the peer is alive, we are the
            # ones not reading (reading paused, or the loop was busy)
            self.last_rx = now
        if actions & _core.HB_PING and w.err is None:
            w.write(self.enc.control(CTL_PING, time.monotonic_ns(), self.rtt_ns))
            self.counts["pings_sent"] += 1
            w.last_tx = now
        if actions & (_core.HB_ALIVE | _core.HB_PING):
            due = self._ask(now)[1]
        self.arm(now, due)

    def received(self) -> None:
        """A read arrived (any byte is liveness); answer its control frames."""
        self.last_rx = self.loop.time()
        bodies = self.dec.take_control()
        if not bodies:
            return
        st = self.counts
        for body in bodies:
            kind = body[0]
            if kind == CTL_PING and len(body) == CTL_PING_LEN:
                st["pings_received"] += 1
                us = int.from_bytes(body[9:13], "big")
                if us != RTT_UNKNOWN:  # the round trip the peer measured
                    self.rtt_ns = us * 1000
                    self.rtt_at = self.loop.time()
                if self.w.err is None:
                    ts = int.from_bytes(body[1:9], "big") or 1
                    self.w.write(self.enc.control(CTL_PONG, ts))
                    st["pongs_sent"] += 1
            elif kind == CTL_PONG and len(body) == CTL_PONG_LEN:
                st["pongs_received"] += 1
                ts = int.from_bytes(body[1:9], "big")
                now = time.monotonic_ns()
                if 0 < ts <= now:
                    self.rtt_ns = now - ts
                    self.rtt_at = self.loop.time()
            else:
                st["unknown_control"] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters with the keys of the synchronous API's."""
        now = self.loop.time()
        d: dict[str, Any] = dict(self.counts)
        d["peer_dead"] = self.dead
        d["idle_rx_s"] = now - self.last_rx
        d["idle_tx_s"] = now - self.w.last_tx
        return d
