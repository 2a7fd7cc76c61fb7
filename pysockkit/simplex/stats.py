"""The counters of a simplex client (``sk.RequestStats``) and server."""

from __future__ import annotations

from dataclasses import dataclass

from .._types import RequestStats


ClientStats = RequestStats
"""A :class:`Client`'s counters: ``sk.RequestStats`` (the name of earlier
versions; its fields ``sent``, ``replied`` and ``timed_out`` are the
aliases of ``requests``, ``replies`` and ``timeouts``).

Example::

    >>> cli.stats
    RequestStats(requests=100, replies=100, errors=0, timeouts=0, failed=0, late=0, ...)
"""


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of a :class:`Server`'s counters.

    * ``sessions``: clients connected now; ``sessions_total`` ever paired;
    * ``requests`` received, ``replies`` written, ``handler_errors`` (sent
      back as error replies);
    * ``unexpected``: frames on a request link that are not requests (dropped);
    * ``rejected``: link handshakes refused; ``dropped``: sessions ended
      because the client misbehaved (did not read its replies within
      ``send_timeout``, reset, broken frames);
    * ``inflight``: requests read but not yet answered, over all clients.

    Example::

        >>> srv.stats.requests
        1000
    """

    sessions: int
    sessions_total: int
    requests: int
    replies: int
    handler_errors: int
    unexpected: int
    rejected: int
    dropped: int
    inflight: int
