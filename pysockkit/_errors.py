"""The exception hierarchy.  Every failure pysockkit raises is an sk.Error.

``Error`` subclasses ``OSError`` so that code written for sockets (``except
OSError``) keeps working; the more specific classes also subclass the
matching builtin (``Timeout`` is a ``TimeoutError``, ``ConnectionReset`` a
``ConnectionResetError``).  The C core raises these very classes: it looks
them up in this module when it is imported.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

__all__ = [
    "Error",
    "Timeout",
    "OutOfStep",
    "FrameTooLarge",
    "IncompleteFrame",
    "ConnectionClosed",
    "ConnectionReset",
    "PeerDead",
    "RemoteError",
]


class Error(OSError):
    """Base class of every pysockkit error.

    Example::

        try:
            conn.recv(timeout=1.0)
        except sk.Error as exc:
            print("pysockkit failed:", exc)

    On a connection made with ``reconnect=``, an operation interrupted by
    the loss of the connection sets ``exc.maybe_delivered``: True when what
    it sent may have reached the peer (it is never retried), False when
    nothing was sent; None for every other error.
    """

    maybe_delivered: Optional[bool] = None


class Timeout(Error, TimeoutError):
    """A deadline passed.  Nothing was lost and the connection stays usable.

    On receive, a partial frame stays buffered and the next ``recv``
    completes it.  On send, ``exc.sent`` (when present) counts the frames
    taken; the tail of a frame already begun is sent first by the next
    ``send``/``flush``.  After a plain-framing ``request``, ``exc.owed``
    counts the replies now owed to timed-out requests (each is dropped when
    it arrives); it is None for other timeouts.

    Example::

        try:
            msg = conn.recv(timeout=0.5)
        except sk.Timeout:
            msg = None          # try again later: nothing was lost
    """

    owed: Optional[int] = None


class OutOfStep(Timeout):
    """A plain-framing request timed out while a reply to an earlier,
    timed-out request arrived and was dropped: replies are arriving behind
    their requests.

    On plain framing a reply carries no id; the n-th frame that comes back
    is the reply to the n-th request, and a reply owed to a request that
    timed out is dropped when it arrives.  Either the peer answers slower
    than the timeout, or it dropped a request without answering it (some
    servers drop a frame they refuse, e.g. one over their size limit), and
    then no later reply on this connection can be matched to its request:
    reconnect, or use ``sk.Framing(correlation=True)`` on both peers so
    that replies are matched by id.  A subclass of :class:`Timeout`;
    ``exc.owed`` is how many replies are owed.

    Example::

        try:
            reply = conn.request(b"job", timeout=1.0)
        except sk.OutOfStep:
            conn.close()
            conn = sk.connect(addr)     # start over in step
    """


class FrameTooLarge(Error):
    """A frame is longer than ``Framing.max_frame``.

    Raised when sending (nothing of the batch is sent) or when a peer's
    header announces more than ``max_frame`` (checked before anything is
    allocated; the stream cannot be resynchronised, so close the
    connection).  ``exc.size`` is the announced length (receive side) or
    the index of the offending frame (send side).

    Example::

        try:
            conn.recv()
        except sk.FrameTooLarge as exc:
            conn.abort()
    """


class IncompleteFrame(Error):
    """The stream ended inside a frame; ``exc.missing`` bytes never came.

    Example::

        try:
            conn.recv()
        except sk.IncompleteFrame as exc:
            print("peer died mid-frame,", exc.missing, "bytes missing")
    """


class ConnectionClosed(Error, ConnectionError):
    """The connection is closed: the peer sent FIN after its last frame, or
    this side already called ``close()``/``abort()``.

    Example::

        while True:
            try:
                msg = conn.recv()
            except sk.ConnectionClosed:
                break           # orderly end of the stream
    """


class ConnectionReset(ConnectionClosed, ConnectionResetError):
    """The peer reset the connection (RST): ECONNRESET or EPIPE.

    Example::

        try:
            conn.send(b"x")
        except sk.ConnectionReset:
            conn = sk.connect(addr)   # reconnect
    """


class PeerDead(Error):
    """The peer stopped answering heartbeats within ``Heartbeat.timeout``.

    Example::

        try:
            conn.recv()
        except sk.PeerDead:
            conn.abort()
    """


class RemoteError(Error):
    """The peer's handler raised while answering this request; the message
    is the peer's error text (``"ExcType: message"``).

    Raised for a correlated request whose reply is an error reply (id with
    the REPLY and ERROR bits, docs/PROTOCOL.md) by every client that
    matches replies by id: ``conn.request_async`` futures and
    ``conn.duplex``, ``aio`` ``request()``, and ``simplex`` clients.  Only
    this request failed: the connection stays usable.

    Example::

        srv = sk.serve(handler=lambda m: 1 // 0, framing=sk.Framing(correlation=True))
        conn = sk.connect(srv.address, framing=sk.Framing(correlation=True))
        try:
            conn.request_async(b"x", timeout=1.0).result()
        except sk.RemoteError as exc:
            print("server said:", exc)    # ZeroDivisionError: integer division or modulo by zero
    """
