"""Wire constants, as the C core defines them (docs/PROTOCOL.md).

The C core owns the wire format; Python reads its constants here and
nowhere else, so that a change in ``csrc`` cannot leave a stale copy in
Python.  Every driver (the threaded duplex, aio, simplex, the servers, the
tour) imports them from this module.

Correlation ids (``Framing(correlation=True)``): a request carries an id in
``1 .. ID_MASK``; its reply carries the same id with ``ID_REPLY`` set, and
an error reply (the peer's handler raised) ``ID_REPLY | ID_ERROR`` too.

Example::

    >>> reply_id(5) == 5 | ID_REPLY, error_id(5) & ID_ERROR != 0
    (True, True)
"""

from __future__ import annotations

from . import _core

__all__ = [
    "ID_REPLY",
    "ID_ERROR",
    "ID_MASK",
    "reply_id",
    "error_id",
    "CTL_PING",
    "CTL_PONG",
    "CTL_PING_LEN",
    "CTL_PONG_LEN",
    "RTT_UNKNOWN",
    "RTT_EVERY",
    "EXPIRED_KEEP",
]

ID_REPLY: int = _core.ID_REPLY
"""Id bit set on a reply: it answers the request with id ``id & ID_MASK``."""
ID_ERROR: int = _core.ID_ERROR
"""Id bit set (with ID_REPLY) on an error reply; its payload is the error text."""
ID_MASK: int = _core.ID_MASK
"""Request ids are ``1 .. ID_MASK``; ``reply & ID_MASK`` is the request's id."""

# Heartbeat control frames (csrc/core/heartbeat.h: SK_CTL_*, SK_HB_RTT_EVERY)
CTL_PING: int = _core.CTL_PING
"""Control frame type of a PING: type + 8-byte timestamp + 4-byte round trip (µs)."""
CTL_PONG: int = _core.CTL_PONG
"""Control frame type of a PONG: type + the echoed 8-byte timestamp."""
CTL_PING_LEN: int = _core.CTL_PING_LEN
"""Bytes of a PING's body."""
CTL_PONG_LEN: int = _core.CTL_PONG_LEN
"""Bytes of a PONG's body."""
RTT_UNKNOWN: int = _core.CTL_RTT_UNKNOWN
"""A PING's round trip when none is known yet."""
RTT_EVERY: int = _core.HB_RTT_EVERY
"""Intervals between round-trip samples, at most."""
EXPIRED_KEEP: int = _core.EXPIRED_KEEP
"""Timed-out request ids remembered, so that their late replies are counted
as late (csrc/core/corr.h), by every correlation book."""


def reply_id(request_id: int) -> int:
    """The id of the reply to the request with id *request_id*.

    Example::

        >>> reply_id(7) & ID_MASK
        7
    """
    return (request_id & ID_MASK) | ID_REPLY


def error_id(request_id: int) -> int:
    """The id of the error reply to the request with id *request_id*.

    Example::

        >>> error_id(7) & (ID_REPLY | ID_ERROR) == ID_REPLY | ID_ERROR
        True
    """
    return (request_id & ID_MASK) | ID_REPLY | ID_ERROR
