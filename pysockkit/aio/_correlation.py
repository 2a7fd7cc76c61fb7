"""The requests of an aio connection that wait for their replies.

Correlated requests (``Framing(correlation=True)`` on both peers) carry an
8-byte id (docs/PROTOCOL.md); the reply with the same id (``ID_REPLY``
set) resolves the request's future, in any order.  A reply whose id is
unknown, already answered or timed out is dropped and counted, never
handed to anyone else.  On plain framing replies carry no id and come in
order: the n-th frame that arrives while replies are owed answers the n-th
request, and the reply owed to a request that timed out is dropped when
it comes (the late-reply rule of the synchronous ``request``).

Those rules are the C core's: the ids, the deadlines, the memory of
expired ids and the verdict on every reply come from its correlation book
(``_core.CorrelationBook``, csrc/core/corr.c, the table of the threaded
duplex).  This module keeps the futures by id and one loop timer armed on
the book's earliest deadline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, Optional

from .. import _core
from .._errors import Error, OutOfStep, Timeout

_DELIVER = _core.CORR_DELIVER
_resolve_replies = _core.resolve_replies
_NONE = _core.CORR_NONE


class Correlation:
    """The requests of one connection (see the module docstring).

    ``book`` is the C correlation book; ``pending`` (the book's
    ``futures`` dict, which ``book.add`` fills) maps a request id to its
    future and ``timeouts`` to its timeout (requests with one).
    *on_replies* runs after a read resolved replies (the connection
    flushes behind the tasks they wake).

    Example::

        corr = Correlation(loop, correlated=True, on_replies=writer.flush_behind)
        rid = corr.register(loop.create_future(), timeout=2.0)   # frame it with rid
        others = corr.route(frames)        # the frames that are not replies
    """

    __slots__ = ("loop", "correlated", "on_replies", "book", "add", "pending", "timeouts",
                 "timer", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, correlated: bool,
                 on_replies: Callable[[], None]) -> None:
        self.loop = loop
        self.correlated = correlated
        self.on_replies = on_replies
        self.book = _core.CorrelationBook(in_order=not correlated)
        # add(fut) -> id: a request with no timeout, its future in pending
        # (the hot path: one C call)
        self.add: Callable[[asyncio.Future[bytes]], int] = self.book.add
        self.pending: dict[int, asyncio.Future[bytes]] = self.book.futures
        self.timeouts: dict[int, float] = {}
        self.timer: Optional[asyncio.TimerHandle] = None
        self.timer_at = math.inf

    def register(self, fut: "asyncio.Future[bytes]", timeout: Optional[float]) -> int:
        """A new request and its future; returns its id.  Call it in the
        order the requests go on the wire (plain framing matches by
        position)."""
        if timeout is None:
            return self.add(fut)
        deadline = self.loop.time() + timeout
        rid: int = self.book.register(deadline)
        self.timeouts[rid] = timeout
        if deadline < self.timer_at:
            self._arm(deadline)
        self.pending[rid] = fut
        return rid

    def unsend(self, rid: int) -> None:
        """Request rid was registered but could not be framed: forget it."""
        self.book.unsend(rid)
        self.pending.pop(rid, None)
        self.timeouts.pop(rid, None)

    # ------------------------------------------------------------ replies

    def route(self, frames: list[Any]) -> list[Any]:
        """Correlation mode: resolve the replies, return the other frames.
        One C call per read: the book settles each reply (late, duplicate
        and stray ones are dropped and counted there) and the delivered
        ones resolve their futures in the same loop."""
        rest, resolved, late = _resolve_replies(frames, self.pending, self.timeouts, self.book)
        if resolved or late:
            self.on_replies()
        return rest

    def route_in_order(self, frames: list[Any]) -> list[Any]:
        """Plain framing with replies owed: the first frames are those
        replies, in the order of their requests; return the others."""
        settle_next = self.book.settle_next
        pending = self.pending
        i = n = 0
        for f in frames:
            action, rid = settle_next()
            if action == _NONE:
                break
            i += 1
            if action == _DELIVER:
                n += 1
                fut = pending.pop(rid)
                if self.timeouts:
                    self.timeouts.pop(rid, None)
                if not fut.done():
                    fut.set_result(f)
        if n:
            self.on_replies()
        return frames[i:] if i else frames

    # -------------------------------------------------- giving up on requests

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._expire)
        self.timer_at = deadline

    def _expire(self) -> None:
        """The earliest deadline passed: fail what the book expired."""
        at, self.timer, self.timer_at = self.timer_at, None, math.inf
        now = max(self.loop.time(), at)
        for rid, out_of_step in self.book.expire(now):
            fut = self.pending.pop(rid, None)
            timeout = self.timeouts.pop(rid, 0.0)
            if fut is not None and not fut.done():
                fut.set_exception(self.timeout_error(timeout, out_of_step))
        nxt = self.book.next_deadline()
        if nxt is not None:
            self._arm(nxt)

    def forget(self, rid: int) -> None:
        """The caller gave up on request rid (cancelled): its reply, if it
        comes, is dropped as late."""
        if self.book.forget(rid):
            self.pending.pop(rid, None)
            self.timeouts.pop(rid, None)

    def fail(self, exc: Error) -> None:
        """Fail every pending request with exc (the connection ended)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer, self.timer_at = None, math.inf
        if self.pending:
            pending = dict(self.pending)  # self.pending is the book's: emptied, kept
            self.pending.clear()
            self.timeouts.clear()
            for rid, fut in pending.items():
                self.book.forget(rid)
                if not fut.done():
                    fut.set_exception(exc)

    @property
    def owed_now(self) -> bool:
        """Plain framing: the next frames are replies (some are owed)."""
        return self.book.owed > 0

    def owed(self) -> int:
        """Plain framing: replies owed to requests that timed out or were
        cancelled (dropped when they come)."""
        return 0 if self.correlated else self.book.owed - self.book.pending

    def stats(self) -> dict[str, int]:
        """The book's counters, with the names of sk.RequestStats."""
        b = self.book.stats
        return {"requests": self.book.issued, "pending": len(self.pending), "owed": self.owed(),
                "replies": b["replies"], "errors": b["remote_errors"],
                "timeouts": b["timeouts"], "late": b["late"], "duplicate": b["duplicate"],
                "unknown": b["unknown"]}

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
