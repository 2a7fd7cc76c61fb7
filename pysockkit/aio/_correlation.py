"""The requests of an aio connection that wait for their replies.

Correlated requests (``Framing(correlation=True)`` on both peers) carry an
8-byte id (docs/PROTOCOL.md); the reply with the same id (``ID_REPLY``
set) resolves the request's future, in any order.  A reply whose id is
unknown, already answered or timed out is dropped and counted, never
handed to anyone else.  On plain framing replies carry no id and come in
order: the n-th frame that arrives while replies are owed answers the n-th
request, and the reply owed to a request that timed out is dropped when
it comes (the late-reply rule of the synchronous ``request``).

The per-frame loops are C (``_core.resolve_replies`` and
``_core.resolve_in_order``, csrc/_pysockkit_reply.c): they pop the future,
cancel its timer and set its result; what they leave is handled here.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Optional

from .. import _core
from .._errors import Error, OutOfStep, Timeout
from .._wire import ID_MASK, ID_REPLY

EXPIRED_KEEP = 65536  # timed-out request ids remembered to count late replies

_resolve_replies = _core.resolve_replies
_resolve_in_order = _core.resolve_in_order


class Correlation:
    """The request book of one connection (see the module docstring).

    ``pending`` maps a request id to its future, ``timers`` to its timeout
    handle; ids count up from 1 (``next_id``) and never wrap: 2**63 of them
    last 29,000 years at 10 million requests a second.  On plain framing
    ``next_reply`` is the id of the request the next reply answers.
    ``stats`` counts replies, timeouts and the dropped ones (late,
    duplicate, unknown).  *on_replies* runs after a read resolved replies
    (the connection flushes behind the tasks they wake).

    Example::

        book = Correlation(loop, correlated=True, on_replies=writer.flush_behind)
        rid = book.next_id
        book.add(rid, loop.create_future(), timeout=2.0)
        others = book.route(frames)        # the frames that are not replies
    """

    __slots__ = ("loop", "correlated", "on_replies", "pending", "timers", "expired",
                 "next_id", "next_reply", "stats")

    def __init__(self, loop: asyncio.AbstractEventLoop, correlated: bool,
                 on_replies: Callable[[], None]) -> None:
        self.loop = loop
        self.correlated = correlated
        self.on_replies = on_replies
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.expired: OrderedDict[int, None] = OrderedDict()
        self.next_id = 1
        self.next_reply = 1
        self.stats = {"replies": 0, "timeouts": 0, "late": 0, "duplicate": 0, "unknown": 0}

    def add(self, rid: int, fut: "asyncio.Future[bytes]", timeout: Optional[float]) -> None:
        """Register request rid (== next_id, its frame encoded) and its
        future, with a timer when *timeout* is not None."""
        self.next_id = rid + 1
        self.pending[rid] = fut
        if timeout is not None:
            self.timers[rid] = self.loop.call_later(
                timeout, self.expire, rid, timeout, self.stats["late"])

    # ------------------------------------------------------------ replies

    def route(self, frames: list[Any]) -> list[Any]:
        """Correlation mode: resolve the replies, return the other frames."""
        rest, replies, late = _resolve_replies(frames, self.pending, self.timers)
        if late:
            self.stats["late"] += late
        if replies:
            self.stats["replies"] += replies
            self.on_replies()
        if not rest:
            return rest
        out: list[Any] = []
        for f in rest:
            if f.__class__ is tuple and f[0] & ID_REPLY:
                self._stray(f[0] & ID_MASK)
            else:
                out.append(f)
        return out

    def route_in_order(self, frames: list[Any]) -> list[Any]:
        """Plain framing with replies owed: the first frames are those
        replies, in the order of their requests; return the others."""
        first = self.next_reply
        owed = self.next_id - first
        rest, replies, late = _resolve_in_order(frames, self.pending, self.timers, first, owed)
        self.next_reply = first + min(owed, len(frames))
        if late:
            self.stats["late"] += late
        if replies:
            self.stats["replies"] += replies
            self.on_replies()
        return rest

    def _stray(self, rid: int) -> None:
        if rid in self.expired:
            self.stats["late"] += 1
        elif 0 < rid < self.next_id:
            self.stats["duplicate"] += 1
        else:
            self.stats["unknown"] += 1

    # -------------------------------------------------- giving up on requests

    def expire(self, rid: int, timeout: float, late0: int) -> None:
        """Request rid got no reply within timeout; late0: the late count
        when it was sent."""
        self.timers.pop(rid, None)
        fut = self.pending.pop(rid, None)
        if fut is None:
            return
        self._remember_expired(rid)
        self.stats["timeouts"] += 1
        if not fut.done():
            fut.set_exception(self.timeout_error(timeout, self.stats["late"] > late0))

    def forget(self, rid: int) -> None:
        """The caller gave up on request rid (cancelled)."""
        h = self.timers.pop(rid, None)
        if h is not None:
            h.cancel()
        if self.pending.pop(rid, None) is not None:
            self._remember_expired(rid)

    def _remember_expired(self, rid: int) -> None:
        ex = self.expired
        ex[rid] = None
        if len(ex) > EXPIRED_KEEP:
            ex.popitem(last=False)

    def fail(self, exc: Error) -> None:
        """Fail every pending request with exc (the connection ended)."""
        if self.pending:
            pending, self.pending = self.pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(exc)
        if self.timers:
            for h in self.timers.values():
                h.cancel()
            self.timers.clear()

    def owed(self) -> int:
        """Plain framing: replies owed to requests that timed out or were
        cancelled (dropped when they come)."""
        return 0 if self.correlated else self.next_id - self.next_reply - len(self.pending)

    def timeout_error(self, timeout: float, behind: bool) -> Timeout:
        """The error of a request with no reply in time.  behind: a late
        reply was dropped while it waited (plain framing: OutOfStep)."""
        if self.correlated:
            return Timeout(f"request: no reply within {timeout} s; a late reply will be "
                           "dropped (conn.stats['late'])")
        owed = self.owed()
        if behind:
            exc: Timeout = OutOfStep(
                f"request: no reply within {timeout} s, and meanwhile a reply arrived that "
                "was dropped as the late reply of an earlier timed-out request: replies are "
                f"arriving behind their requests ({owed} owed now). Either the peer answers "
                "slower than the timeout, or it dropped a request without answering it, and "
                "then no reply on this plain connection can be matched to its request any "
                "more: reconnect, or use sk.Framing(correlation=True) on both peers (replies "
                "matched by id)")
        else:
            exc = Timeout(
                f"request: no reply within {timeout} s; its reply is owed ({owed} owed now) "
                "and will be dropped when it arrives, never given to a later request. If the "
                "peer only answers late, later requests stay matched; if it dropped the "
                "request without answering (some servers drop a frame they refuse), later "
                "replies arrive one place behind and later requests raise sk.OutOfStep: then "
                "reconnect, or use sk.Framing(correlation=True) on both peers")
        exc.owed = owed
        return exc
