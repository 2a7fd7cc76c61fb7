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
]

ID_REPLY: int = _core.ID_REPLY
"""Id bit set on a reply: it answers the request with id ``id & ID_MASK``."""
ID_ERROR: int = _core.ID_ERROR
"""Id bit set (with ID_REPLY) on an error reply; its payload is the error text."""
ID_MASK: int = _core.ID_MASK
"""Request ids are ``1 .. ID_MASK``; ``reply & ID_MASK`` is the request's id."""

# Heartbeat control frames (csrc/heartbeat.h: SK_CTL_*, SK_HB_RTT_EVERY).
# _core does not export these yet; until it does they are written here,
# once, and nowhere else in Python (the asyncio heartbeat reads them).
CTL_PING = 1  # SK_CTL_PING: type + 8-byte timestamp + 4-byte round trip (µs)
CTL_PONG = 2  # SK_CTL_PONG: type + the echoed 8-byte timestamp
CTL_PING_LEN = 13  # SK_CTL_PING_LEN
CTL_PONG_LEN = 9  # SK_CTL_PONG_LEN
RTT_UNKNOWN = 0xFFFFFFFF  # SK_CTL_RTT_UNKNOWN: a PING's round trip when none is known
RTT_EVERY = 8  # SK_HB_RTT_EVERY: intervals between round-trip samples, at most


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
