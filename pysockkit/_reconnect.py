"""Reconnecting long connections: the policy, the events and their log.

The one place that both reconnecting clients use (the synchronous
``sk.connect(..., reconnect=)`` in ``_redial.py`` and the asyncio
``aio.connect(..., reconnect=)`` in ``aio/reconnecting.py``):

* :class:`Reconnect`, the policy (exponential backoff with jitter, the
  gRPC connection-backoff spec's defaults) and :class:`Backoff`, the
  schedule of one outage;
* :class:`ConnectionEvent`, the lifecycle events (``connected``, ``lost``,
  ``retrying``, ``gave_up``, ``closed``; servers ``accepted``);
* :class:`EventLog`, the bounded log behind ``conn.events()`` (each reader
  has its own position and counts what it missed) and the ``on_event=``
  callback dispatch;
* :func:`is_loss` and :func:`lost_error`, which errors mean "the
  connection is gone" and the error an interrupted operation raises.

See docs/reconnect.md.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

from ._errors import ConnectionClosed, Error, IncompleteFrame, PeerDead, Timeout
from ._net import format_address

__all__ = ["Reconnect", "ConnectionEvent", "EventLog", "EventReader"]

log = logging.getLogger("pysockkit")

KINDS = frozenset({"connected", "lost", "retrying", "gave_up", "closed", "accepted"})
EVENTS_KEPT = 1000  # conn.events() keeps the most recent this many
# a connection that stayed up this long (or Reconnect.initial, if longer)
# restarts the backoff schedule; a shorter one (a server that accepts and
# closes at once) continues it, so that it is no busy loop
STABLE = 1.0

# errno values of a connection the kernel gave up on (keepalive, user
# timeout, an unreachable peer): the connection is gone, as after FIN/RST
_LOSS_ERRNOS = frozenset({errno.ETIMEDOUT, errno.EPIPE, errno.ECONNRESET,
                          errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.ENETDOWN, errno.EHOSTDOWN})


def _seconds(name: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Reconnect.{name} must be a number of seconds, not {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not zero):
        least = ">= 0" if zero else "> 0"
        raise ValueError(f"Reconnect.{name} must be a finite number of seconds {least}, "
                         f"not {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a long connection comes back after it was lost.

    After a loss the client tries at once, then waits ``initial`` seconds,
    then ``initial * multiplier``, ... up to ``maximum``, each wait moved at
    random by up to ``± jitter`` of itself so that many clients of one
    restarted server do not all come back in the same instant.  Each
    attempt may take ``connect_timeout`` seconds.  ``attempts`` bounds the
    attempts of one outage (None: forever); when they are spent the
    connection gives up (event ``gave_up``, every later call raises
    ``sk.ConnectionClosed``).  The defaults are the gRPC connection-backoff
    spec's (1 s, ×1.6, ±20 %, 120 s, 20 s connect timeout); for a server on
    the same host or LAN ``initial=0.1, maximum=5`` comes back faster.

    Example::

        conn = sk.connect(addr, timeout=10, reconnect=sk.Reconnect(initial=0.1, maximum=5.0))
        conn.request(b"x", timeout=2)      # works across a server restart
        print(conn.reconnects)
    """

    initial: float = 1.0
    maximum: float = 120.0
    multiplier: float = 1.6
    jitter: float = 0.2
    attempts: Optional[int] = None
    connect_timeout: float = 20.0

    def __post_init__(self) -> None:
        initial = _seconds("initial", self.initial)
        maximum = _seconds("maximum", self.maximum)
        _seconds("connect_timeout", self.connect_timeout)
        if maximum < initial:
            raise ValueError(f"Reconnect.maximum ({self.maximum} s) must be >= initial "
                             f"({self.initial} s)")
        m = self.multiplier
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 1.0 <= m < math.inf:
            raise ValueError(f"Reconnect.multiplier must be a number >= 1 (1: a constant "
                             f"delay), not {m!r}")
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, (int, float)) or not 0.0 <= j < 1.0:
            raise ValueError(f"Reconnect.jitter must be a fraction in [0, 1) (0.2: each "
                             f"delay moved by up to ±20 %), not {j!r}")
        a = self.attempts
        if a is not None and (isinstance(a, bool) or not isinstance(a, int) or a < 1):
            raise ValueError(f"Reconnect.attempts must be None (retry forever) or a whole "
                             f"number >= 1, not {a!r}")

    def backoff(self, rng: Optional[random.Random] = None) -> "Backoff":
        """A fresh schedule for one outage.

        Example::

            >>> b = sk.Reconnect(initial=0.1, jitter=0).backoff()
            >>> [b.next_delay() for _ in range(3)]
            [0.1, 0.16, 0.256]
        """
        return Backoff(self, rng or random.Random())


class Backoff:
    """The delays of one outage: ``initial``, then × ``multiplier`` up to
    ``maximum``, each with ``± jitter`` (the gRPC connection-backoff
    algorithm).  ``attempt`` counts the attempts made so far.

    Example::

        b = sk.Reconnect(initial=0.1).backoff()
        b.next_delay()          # about 0.1 (0.08 to 0.12)
    """

    __slots__ = ("policy", "attempt", "_current", "_rng")

    def __init__(self, policy: Reconnect, rng: random.Random) -> None:
        self.policy = policy
        self.attempt = 0
        self._current = policy.initial
        self._rng = rng

    def exhausted(self) -> bool:
        """True when ``policy.attempts`` attempts were made."""
        a = self.policy.attempts
        return a is not None and self.attempt >= a

    def plan(self, deadline: Optional[float], last: Optional[BaseException],
             where: str) -> float:
        """The wait before the next attempt (0: at once, the first one):
        raises ``last`` when the attempts are spent, ``sk.Timeout`` when
        the wait would pass ``deadline`` (a ``time.monotonic()``)."""
        if self.exhausted():
            assert last is not None
            raise last
        if self.attempt == 0:
            return 0.0
        delay = self.next_delay()
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise self.timeout(where, last)
        return delay

    def timeout(self, where: str, last: Optional[BaseException]) -> Timeout:
        """The ``sk.Timeout`` of a first connect that did not succeed in time."""
        return Timeout(f"connect to {where}: not connected within the timeout "
                       f"({self.attempt} attempts; last: {last})")

    def next_delay(self) -> float:
        """The wait before the next attempt (and advance the schedule)."""
        p = self.policy
        base = min(self._current, p.maximum)
        self._current = min(self._current * p.multiplier, p.maximum)
        if p.jitter:
            base *= 1.0 + self._rng.uniform(-p.jitter, p.jitter)
        return round(base, 6)


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One event in the life of a long connection.

    ``kind`` is one of ``"connected"`` (details ``local``, ``remote``),
    ``"lost"`` (``reason``: ``"closed"``, ``"reset"``, ``"peer_dead"``,
    ``"error"``; ``exception``), ``"retrying"`` (``attempt``, ``delay``:
    the wait before that attempt; ``exception``: why the previous one
    failed, or None), ``"gave_up"`` (``attempts``, ``exception``),
    ``"closed"`` (close() on this side), and on servers ``"accepted"``
    (``remote``).  ``time`` is ``time.monotonic()``.

    Example::

        for ev in conn.events(wait=False):
            print(ev.kind, ev.details)
    """

    kind: str
    time: float
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __str__(self) -> str:
        parts = []
        for k, v in self.details.items():
            if k in ("local", "remote") and isinstance(v, tuple):
                v = format_address(v)
            elif isinstance(v, BaseException):
                v = f"{type(v).__name__}({v})"
            elif isinstance(v, float):
                v = f"{v:.3f}"
            parts.append(f"{k}={v}")
        return f"{self.time:.3f} {self.kind}" + (" " + " ".join(parts) if parts else "")


def make_event(kind: str, **details: Any) -> ConnectionEvent:
    """A :class:`ConnectionEvent` of ``kind`` stamped now."""
    assert kind in KINDS, kind
    return ConnectionEvent(kind, time.monotonic(), MappingProxyType(details))


class EventLog:
    """The bounded log of a connection's events, and the ``on_event``
    dispatch.  Thread-safe; the newest ``maxlen`` events are kept and a
    reader that fell behind counts what it missed (``dropped``).  An
    ``on_event`` callback that raises is logged (logger ``pysockkit``) and
    counted in ``callback_errors``, never propagated."""

    def __init__(self, on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
                 maxlen: int = EVENTS_KEPT, *, ends_on_closed: bool = True) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be a callable taking a ConnectionEvent, "
                            f"not {on_event!r}")
        self._on_event = on_event
        self._events: deque[ConnectionEvent] = deque(maxlen=maxlen)
        self._seq = 0  # events ever logged
        self._ended = False
        # a connection's log ends with its "closed"; a server's (whose
        # "closed" is one client's) ends with end()
        self._ends_on_closed = ends_on_closed
        self._cond = threading.Condition()
        self._wakers: list[Callable[[], None]] = []
        self.callback_errors = 0

    def emit(self, kind: str, **details: Any) -> ConnectionEvent:
        """Log an event, wake the readers, call ``on_event``."""
        ev = make_event(kind, **details)
        with self._cond:
            self._events.append(ev)
            self._seq += 1
            if kind == "closed" and self._ends_on_closed:
                self._ended = True
            self._cond.notify_all()
            wakers = list(self._wakers)
        for w in wakers:
            w()
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:
                self.callback_errors += 1
                log.exception("pysockkit: the on_event callback raised on %s", ev)
        return ev

    def end(self) -> None:
        """End the log (a server's, at close): the waiting readers stop
        after the events already logged."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()
            wakers = list(self._wakers)
        for w in wakers:
            w()

    def add_waker(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after each event (the asyncio readers)."""
        with self._cond:
            self._wakers.append(fn)

    def remove_waker(self, fn: Callable[[], None]) -> None:
        with self._cond:
            if fn in self._wakers:
                self._wakers.remove(fn)

    def take(self, pos: int) -> tuple[list[ConnectionEvent], int, int, bool]:
        """(events since ``pos``, how many of them were dropped, the new
        position, whether the log ended)."""
        with self._cond:
            return self._take(pos)

    def _take(self, pos: int) -> tuple[list[ConnectionEvent], int, int, bool]:
        first = self._seq - len(self._events)  # sequence number of _events[0]
        dropped = max(0, first - pos)
        start = max(pos, first) - first
        evs = list(self._events)[start:] if start < len(self._events) else []
        return evs, dropped, self._seq, self._ended

    def wait(self, pos: int, timeout: Optional[float]) -> bool:
        """Wait until an event after ``pos`` was logged or the log ended;
        False on timeout.  Interruptible by Ctrl-C."""
        with self._cond:
            return self._cond.wait_for(lambda: self._seq > pos or self._ended, timeout)

    def reader(self, wait: bool = True, timeout: Optional[float] = None,
               since_start: bool = True) -> "EventReader":
        """A new reader (see :class:`EventReader`)."""
        return EventReader(self, wait, timeout, 0 if since_start else self._seq)

    def __len__(self) -> int:
        return len(self._events)


class EventReader(Iterator[ConnectionEvent]):
    """What ``conn.events()`` returns: an iterator over the connection's
    events, from the oldest one kept.  With ``wait=True`` (the default) it
    waits for new events and ends after ``closed`` (or after ``timeout``
    seconds without an event); with ``wait=False`` it ends when it caught
    up.  ``dropped`` counts events that fell out of the bounded log before
    this reader got to them.

    Example::

        for ev in conn.events(wait=False):
            print(ev)
        print(conn.events().dropped)
    """

    def __init__(self, log_: EventLog, wait: bool, timeout: Optional[float], pos: int) -> None:
        self._log = log_
        self._wait = wait
        self._timeout = timeout
        self._pos = pos
        self._buf: deque[ConnectionEvent] = deque()
        self.dropped = 0
        self.ended = False  # the log ended (after "closed")

    def _fill(self) -> bool:
        """Take what is new; True when the log ended."""
        evs, dropped, self._pos, ended = self._log.take(self._pos)
        self.dropped += dropped
        self._buf.extend(evs)
        self.ended = ended
        return ended

    def __iter__(self) -> "EventReader":
        return self

    def __next__(self) -> ConnectionEvent:
        while True:
            if self._buf:
                return self._buf.popleft()
            ended = self._fill()
            if self._buf:
                return self._buf.popleft()
            if ended or not self._wait:
                raise StopIteration
            if not self._log.wait(self._pos, self._timeout):
                raise StopIteration


def is_loss(exc: BaseException) -> bool:
    """True when ``exc`` means that the connection is gone: FIN
    (``ConnectionClosed``, ``IncompleteFrame``), RST (``ConnectionReset``),
    ``PeerDead``, or a connection the kernel gave up on."""
    if isinstance(exc, Timeout):
        return False
    if isinstance(exc, (ConnectionClosed, IncompleteFrame, PeerDead)):
        return True
    return isinstance(exc, Error) and exc.errno in _LOSS_ERRNOS


def loss_reason(exc: Optional[BaseException]) -> str:
    """The ``reason`` of a ``lost`` event for ``exc``."""
    from ._errors import ConnectionReset

    if isinstance(exc, PeerDead):
        return "peer_dead"
    if isinstance(exc, ConnectionReset):
        return "reset"
    if isinstance(exc, (ConnectionClosed, IncompleteFrame)):
        return "closed"
    return "error"


def lost_error(exc: BaseException, op: str, where: str, sent: Optional[bool]) -> Error:
    """The error an operation in flight raises when the connection is lost:
    the same type as ``exc`` (chained to it), saying whether the request
    may have reached the peer (``maybe_delivered``), that it was not
    retried, and that the connection reconnects."""
    if sent is None:
        said = ""
    elif sent:
        said = ("; what this call sent may have reached the peer (it may have acted on "
                "it) and was NOT retried")
    else:
        said = "; nothing of this call was sent"
    msg = (f"{op}: the connection to {where} was lost while the call was in flight "
           f"({exc}){said}; the connection reconnects by itself: call again when the "
           "operation is safe to repeat")
    cls = type(exc) if isinstance(exc, Error) else ConnectionClosed
    try:
        code = getattr(exc, "errno", None)
        new: Error = cls(code, msg) if code else cls(msg)
    except TypeError:
        new = ConnectionClosed(msg)
    for attr in ("missing", "size"):
        if hasattr(exc, attr):
            try:
                setattr(new, attr, getattr(exc, attr))
            except AttributeError:
                pass
    new.maybe_delivered = sent
    new.__cause__ = exc
    return new


def down_timeout(op: str, where: str, timeout: Optional[float], since: float,
                 reason: str, attempt: int) -> Timeout:
    """The ``sk.Timeout`` of an operation that waited for a connection
    that stayed down."""
    ago = time.monotonic() - since
    exc = Timeout(
        f"{op}: the connection to {where} was down for the whole {timeout} s (lost "
        f"{ago:.3f} s ago: {reason}; {attempt} reconnect attempt(s) so far); nothing of "
        "this call was sent: call again, or use a longer timeout")
    exc.maybe_delivered = False
    return exc


def down_error(op: str, where: str, state: str, attempts: int,
               final: Optional[BaseException]) -> ConnectionClosed:
    """What a call raises on a connection that was closed or gave up."""
    if state == "closed":
        return ConnectionClosed(f"{op}: this connection was closed (close() on this side)")
    exc = ConnectionClosed(f"{op}: the connection to {where} is gone: reconnecting gave up "
                           f"after {attempts} attempt(s) ({final}); make a new connection")
    exc.__cause__ = final
    return exc


class Lifecycle:
    """The state and bookkeeping both reconnecting connections share (the
    sync one guards it with its lock, the aio one runs on its loop):
    where it connects, the policy, the event log, the state (``connecting``,
    ``up``, ``down``, ``gave_up``, ``closed``), the current outage's
    backoff, and the counters.  Subclasses add the I/O."""

    def __init__(self, addr: Any, policy: Reconnect,
                 on_event: Optional[Callable[[ConnectionEvent], Any]]) -> None:
        from ._net import parse_address

        if not isinstance(policy, Reconnect):
            raise TypeError(f"reconnect must be an sk.Reconnect, not {policy!r}")
        self._addr = addr
        self._where = format_address(parse_address(addr))
        self._policy = policy
        self._log = EventLog(on_event)
        self._state = "connecting"
        # the schedule of the current outage; it goes on across connections
        # that do not stay up (a server that accepts and closes at once)
        self._backoff: Optional[Backoff] = None
        self._up_since = 0.0
        self._down_since = time.monotonic()
        self._down_reason = "not connected yet"
        self._last_loss: Optional[BaseException] = None  # why the last connection ended
        self._final: Optional[BaseException] = None  # why it gave up
        self._next_id = 1  # correlation ids continue across connections
        self.reconnects = 0

    @property
    def attempts(self) -> int:
        """Connection attempts made in the current outage."""
        return 0 if self._backoff is None else self._backoff.attempt

    def _schedule(self) -> Backoff:
        if self._backoff is None:
            self._backoff = self._policy.backoff()
        return self._backoff

    def _mark_up(self) -> None:
        if self._state == "down":
            self.reconnects += 1
        self._state = "up"

    def _mark_down(self, exc: BaseException) -> None:
        self._state = "down"
        now = time.monotonic()
        self._down_since = now
        self._down_reason = str(exc)
        self._last_loss = exc
        if now - self._up_since >= max(self._policy.initial, STABLE):
            self._backoff = None  # it was up long enough: start over

    def _mark_gave_up(self, final: BaseException) -> None:
        self._state = "gave_up"
        self._final = final

    def _emit_connected(self, conn: Any) -> None:
        try:
            local, remote = conn.local_address, conn.remote_address
        except OSError:
            local = remote = None
        self._log.emit("connected", local=local, remote=remote)

    def _unusable(self, op: str) -> Optional[ConnectionClosed]:
        """The error of a call on a closed or given-up connection, else None."""
        if self._state in ("closed", "gave_up"):
            return down_error(op, self._where, self._state, self.attempts, self._final)
        return None

    def _wait_left(self, op: str, deadline: Optional[float],
                   timeout: Optional[float]) -> tuple[bool, Optional[float]]:
        """(True, None) when a connection is up; else (False, the seconds a
        call may still wait for one, None: forever).  Raises the call's
        error when the connection was closed or gave up, or its
        ``sk.Timeout`` at ``deadline``."""
        if self._state == "up":
            return True, None
        bad = self._unusable(op)
        if bad is not None:
            raise bad
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise self._down_timeout(op, timeout)
        return False, left

    def _down_timeout(self, op: str, timeout: Optional[float]) -> Timeout:
        return down_timeout(op, self._where, timeout, self._down_since, self._down_reason,
                            self.attempts)

    def _closed_in_call(self, op: str, exc: BaseException) -> ConnectionClosed:
        err = ConnectionClosed(f"{op}: this connection was closed (close() on this side) "
                               "while the call waited")
        err.__cause__ = exc
        return err

    @property
    def closed(self) -> bool:
        """True once close()/abort() ran (not while reconnecting).

        Example::

            >>> conn.closed
            False
        """
        return self._state == "closed"

    @property
    def connected(self) -> bool:
        """True while a connection is up (False while reconnecting).

        Example::

            >>> conn.connected
            True
        """
        return self._state == "up"

    @property
    def reconnect(self) -> Reconnect:
        """The :class:`sk.Reconnect` policy."""
        return self._policy

    @property
    def address(self) -> tuple[str, int]:
        """The address this connection (re)connects to."""
        from ._net import parse_address

        return parse_address(self._addr)
