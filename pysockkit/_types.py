"""Configuration values and counters: frozen, slotted value classes.

Hand-written rather than ``@dataclass``: ``import pysockkit`` loads this
module, and dataclasses (with inspect and re) would cost it about half its
import time.  They behave as ``@dataclass(frozen=True, slots=True)`` classes
(same constructor, ``==``, ``hash``, ``repr``; assigning raises
``dataclasses.FrozenInstanceError``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Generic, Literal, Optional, overload

    from . import _core
    from ._typevars import M
else:
    from ._notyping import Generic, overload

    M = None  # Generic[M] is the run-time stand-in base

__all__ = ["Framing", "Heartbeat", "Keepalive", "Message", "RequestStats"]

Message = bytes | tuple[int, bytes]
"""What ``recv`` returns on a connection with ``Framing(correlation=True)``:
``bytes`` for a plain frame, ``(id, payload)`` for a correlated request sent
by the peer's ``request()`` (answer it with ``reply(id, data)``).  On plain
framing ``recv`` returns ``bytes``.  The type parameter of
``sk.Connection``/``aio.Connection`` and of ``sk.Framing``: type checkers
see ``sk.connect(addr)`` as ``sk.Connection[bytes]`` and
``sk.connect(addr, framing=sk.Framing(correlation=True))`` as
``sk.Connection[sk.Message]`` (docs/modes.md, "Types").

Example::

    msg = await conn.recv()
    if isinstance(msg, tuple):
        await conn.reply(msg[0], b"answer")
"""

_DEFAULT_MAX_FRAME = 16 * 2**20
_HEADER_LIMIT = {1: 2**8 - 1, 2: 2**16 - 1, 4: 2**32 - 1, 8: 2**64 - 1}


class _Frozen:
    """What ``@dataclass(frozen=True, slots=True)`` adds, for the classes
    below: each lists its fields in ``__slots__`` (in order) and sets them
    in ``__init__`` with ``object.__setattr__``."""

    __slots__: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        from dataclasses import FrozenInstanceError  # only on this error path

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__ and isinstance(other, _Frozen):
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{self.__class__.__qualname__}({fields})"

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy
        return (self.__class__, self._values())


class Framing(_Frozen, Generic[M]):
    """How frames are delimited on the wire: ``[length][payload]``.

    ``header_size`` is the width of the length field in bytes (1, 2, 4 or 8),
    ``byteorder`` its byte order, ``max_frame`` the largest payload accepted
    or sent.  ``correlation=True`` enables correlated frames (an 8-byte id
    after the header, docs/PROTOCOL.md) for the asynchronous modes; plain
    frames stay plain.  A peer announcing more than ``max_frame`` gets
    ``sk.FrameTooLarge`` before anything is allocated.  When ``max_frame`` is
    left at its default it is clipped to what the header can carry (255 for
    a 1-byte header, 65535 for 2 bytes).

    Example::

        >>> sk.Framing()                      # Netty/Twisted Int32 style
        Framing(header_size=4, byteorder='big', max_frame=16777216, correlation=False)
        >>> sk.Framing(header_size=2, byteorder="little").max_frame
        65535

    For type checkers a Framing is generic in what ``recv`` returns on its
    connections: ``Framing()`` is a ``Framing[bytes]``,
    ``Framing(correlation=True)`` a ``Framing[sk.Message]``, and
    ``connect``/``listen`` carry that type over to their connections.
    """

    __match_args__ = ("header_size", "byteorder", "max_frame", "correlation")
    __slots__ = __match_args__
    header_size: int
    byteorder: Literal["big", "little"]
    max_frame: int
    correlation: bool

    # correlation picks the type of the messages recv returns
    @overload
    def __init__(self: "Framing[bytes]", header_size: int = 4,
                 byteorder: Literal["big", "little"] = "big",
                 max_frame: int = _DEFAULT_MAX_FRAME,
                 correlation: Literal[False] = False) -> None: ...

    @overload
    def __init__(self: "Framing[Message]", header_size: int = 4,
                 byteorder: Literal["big", "little"] = "big",
                 max_frame: int = _DEFAULT_MAX_FRAME, *,
                 correlation: Literal[True]) -> None: ...

    @overload
    def __init__(self: "Framing[Message]", header_size: int = 4,
                 byteorder: Literal["big", "little"] = "big",
                 max_frame: int = _DEFAULT_MAX_FRAME,
                 correlation: bool = False) -> None: ...

    def __init__(self, header_size: int = 4, byteorder: Literal["big", "little"] = "big",
                 max_frame: int = _DEFAULT_MAX_FRAME, correlation: bool = False) -> None:
        init = object.__setattr__
        init(self, "header_size", header_size)
        init(self, "byteorder", byteorder)
        init(self, "max_frame", max_frame)
        init(self, "correlation", correlation)
        limit = _HEADER_LIMIT.get(self.header_size)
        if limit is None:
            raise ValueError(
                f"header_size must be 1, 2, 4 or 8, not {self.header_size!r}"
            )
        if self.byteorder not in ("big", "little"):
            raise ValueError(
                f"byteorder must be 'big' or 'little', not {self.byteorder!r}"
            )
        if not isinstance(self.max_frame, int) or self.max_frame < 1:
            raise ValueError(f"max_frame must be an int >= 1, not {self.max_frame!r}")
        if self.correlation:
            # the id flag takes the second-highest bit, and the id 8 bytes
            limit = (limit >> 2) - 8
            if limit < 1:
                raise ValueError("correlated frames need header_size >= 2")
        if self.max_frame > limit:
            if self.max_frame == _DEFAULT_MAX_FRAME:
                object.__setattr__(self, "max_frame", limit)
            else:
                raise ValueError(
                    f"max_frame {self.max_frame} does not fit a "
                    f"{self.header_size}-byte header (at most {limit})"
                )

    def encoder(self, control: bool = False) -> "_core.Encoder":
        """A C :class:`sk.Encoder` for this framing (for your own I/O).

        Example::

            >>> sk.Framing().encoder().encode(b"hi")
            b'\\x00\\x00\\x00\\x02hi'
        """
        from . import _core

        return _core.Encoder(self.header_size, self.byteorder, self.max_frame, control,
                             self.correlation)

    def decoder(self, control: bool = False) -> "_core.Decoder":
        """A C :class:`sk.Decoder` for this framing (for your own I/O).

        Example::

            >>> sk.Framing().decoder().feed(b"\\x00\\x00\\x00\\x02hi")
            [b'hi']
        """
        from . import _core

        return _core.Decoder(self.header_size, self.byteorder, self.max_frame, control,
                             self.correlation)

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` as one frame (header + payload), for tests and
        for talking to pysockkit from code that has only a plain socket.

        Example::

            >>> sk.Framing(header_size=2).encode(b"hi")
            b'\\x00\\x02hi'
        """
        if len(payload) > self.max_frame:
            from ._errors import FrameTooLarge

            raise FrameTooLarge(
                f"payload of {len(payload)} bytes exceeds max_frame {self.max_frame}"
            )
        return len(payload).to_bytes(self.header_size, self.byteorder) + bytes(payload)


class Heartbeat(_Frozen):
    """Application-level liveness for a long connection.

    The reactor thread (in C, without the GIL) sends a PING control frame
    when nothing was sent for ``interval`` seconds and declares the peer
    dead when nothing at all was received for ``timeout`` seconds; blocked
    and later calls then raise ``sk.PeerDead``.  Any received byte counts as
    liveness.  Both peers must enable heartbeats: they use the control-frame
    extension of docs/PROTOCOL.md (the top bit of the length field), which a
    plain peer does not understand.

    Example::

        conn = sk.connect(addr, heartbeat=sk.Heartbeat(interval=1.0, timeout=3.0))
        conn.latency        # last ping round trip in seconds, or None
    """

    __match_args__ = ("interval", "timeout")
    __slots__ = __match_args__
    interval: float
    timeout: float

    def __init__(self, interval: float = 1.0, timeout: float = 3.0) -> None:
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "timeout", timeout)
        if not (self.interval > 0 and self.timeout > 0):
            raise ValueError("Heartbeat interval and timeout must be > 0 seconds")
        if self.timeout < 2 * self.interval:
            raise ValueError(
                f"Heartbeat timeout ({self.timeout} s) must be at least twice the interval "
                f"({self.interval} s), or a healthy peer that lost one beat would be "
                "declared dead"
            )


class Keepalive(_Frozen):
    """Kernel-level liveness: TCP keepalive probes and TCP_USER_TIMEOUT.

    ``idle``, ``interval`` (seconds) and ``count`` set TCP_KEEPIDLE,
    TCP_KEEPINTVL and TCP_KEEPCNT: after ``idle`` seconds without traffic
    the kernel probes every ``interval`` seconds and resets the connection
    after ``count`` unanswered probes.  Keepalive does nothing while data is
    unacknowledged; ``user_timeout`` (seconds, TCP_USER_TIMEOUT) covers
    that case: the kernel aborts when sent data stays unacknowledged that
    long.  None leaves the system default.  See docs/heartbeat.md.

    Example::

        conn = sk.connect(addr, keepalive=sk.Keepalive(idle=10, interval=2, count=3,
                                                       user_timeout=15))
    """

    __match_args__ = ("idle", "interval", "count", "user_timeout")
    __slots__ = __match_args__
    idle: Optional[int]
    interval: Optional[int]
    count: Optional[int]
    user_timeout: Optional[float]

    def __init__(self, idle: Optional[int] = None, interval: Optional[int] = None,
                 count: Optional[int] = None, user_timeout: Optional[float] = None) -> None:
        init = object.__setattr__
        init(self, "idle", idle)
        init(self, "interval", interval)
        init(self, "count", count)
        init(self, "user_timeout", user_timeout)
        for name in ("idle", "interval", "count"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"Keepalive.{name} must be a whole number >= 1, not {v!r}")
        if self.user_timeout is not None and self.user_timeout < 0:
            raise ValueError("Keepalive.user_timeout must be >= 0 seconds")

    def apply(self, fd: int) -> None:
        """Set the options on socket ``fd``.

        Example::

            sk.Keepalive(idle=5).apply(sock.fileno())
        """
        from . import _core

        _core.set_keepalive(fd, *self._args())

    def _args(self) -> "tuple[int, int, int, int]":
        """(idle, interval, count, user_timeout_ms) as the core takes them:
        0 (or -1 for the user timeout) leaves the system default."""
        uto = -1 if self.user_timeout is None else int(self.user_timeout * 1000)
        return (self.idle or 0, self.interval or 0, self.count or 0, uto)


class RequestStats(_Frozen, Mapping[str, int]):
    """A snapshot of the request/reply counters of a connection: the one
    vocabulary of the threaded duplex (``conn.duplex.stats``), asyncio
    (``aio.Connection.stats``) and simplex (``simplex.Client.stats``).

    * ``requests``: requests sent; ``replies``: replies handed to their
      request, ``errors`` of them error replies (``sk.RemoteError``);
    * ``timeouts``: requests that failed with ``sk.Timeout``; ``failed``:
      requests failed because the connection (or a simplex link) ended;
    * replies dropped, never handed to anyone: ``late`` (after their
      request timed out or was cancelled), ``duplicate`` (a second reply),
      ``unknown`` (an id never sent); ``unexpected``: frames that are
      neither a reply nor a message (simplex's reply link), dropped;
    * ``pending``: requests in flight now; ``owed`` (plain framing):
      replies still to come for requests that timed out, to be dropped;
    * ``messages``: frames received that are not replies, ``queued`` of
      them not read yet, ``callback_errors``: ``on_message`` raised;
      ``read_pauses``: times reading paused because the receive queue was full.

    A counter a mode does not keep is None, and absent from the mapping
    view: the threaded duplex counts a duplicate reply as ``unknown`` and
    does not count ``requests``; aio has no ``on_message``.  Read a counter
    as an attribute (``st.late``) or by name (``st["late"]``, as the dicts
    of earlier versions); ``dict(st)`` has the counters the mode keeps.
    ``sent``, ``replied`` and ``timed_out`` are the simplex names of
    ``requests``, ``replies`` and ``timeouts``.

    Example::

        >>> st = RequestStats(requests=3, replies=2, timeouts=1, late=1, pending=0)
        >>> st.late, st["replies"], st.timed_out, dict(st)["requests"]
        (1, 2, 1, 3)
    """

    __match_args__ = (
        "requests", "replies", "errors", "timeouts", "failed", "late", "duplicate",
        "unknown", "unexpected", "pending", "owed", "messages", "queued",
        "callback_errors", "read_pauses",
    )
    __slots__ = __match_args__
    requests: Optional[int]
    replies: Optional[int]
    errors: Optional[int]
    timeouts: Optional[int]
    failed: Optional[int]
    late: Optional[int]
    duplicate: Optional[int]
    unknown: Optional[int]
    unexpected: Optional[int]
    pending: Optional[int]
    owed: Optional[int]
    messages: Optional[int]
    queued: Optional[int]
    callback_errors: Optional[int]
    read_pauses: Optional[int]

    def __init__(self, requests: Optional[int] = None, replies: Optional[int] = None,
                 errors: Optional[int] = None, timeouts: Optional[int] = None,
                 failed: Optional[int] = None, late: Optional[int] = None,
                 duplicate: Optional[int] = None, unknown: Optional[int] = None,
                 unexpected: Optional[int] = None, pending: Optional[int] = None,
                 owed: Optional[int] = None, messages: Optional[int] = None,
                 queued: Optional[int] = None, callback_errors: Optional[int] = None,
                 read_pauses: Optional[int] = None) -> None:
        values = (requests, replies, errors, timeouts, failed, late, duplicate, unknown,
                  unexpected, pending, owed, messages, queued, callback_errors, read_pauses)
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    @property
    def sent(self) -> Optional[int]:
        """``requests``, by its simplex name."""
        return self.requests

    @property
    def replied(self) -> Optional[int]:
        """``replies``, by its simplex name."""
        return self.replies

    @property
    def timed_out(self) -> Optional[int]:
        """``timeouts``, by its simplex name."""
        return self.timeouts

    def __getitem__(self, name: str) -> int:
        value = getattr(self, name, None) if name in _STAT_NAMES else None
        if value is None:
            raise KeyError(name)
        return int(value)

    def __iter__(self) -> Iterator[str]:
        return (n for n in _STAT_NAMES if getattr(self, n) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"RequestStats({', '.join(f'{n}={self[n]}' for n in self)})"


_STAT_NAMES = RequestStats.__slots__
