"""Asynchronous duplex over threads: a receive worker and correlated requests.

The worker is a C thread (csrc/_pysockkit_conn.c, ``_start_worker``) that
waits for and decodes frames without the GIL and hands them over in batches
to :meth:`Duplex._dispatch`, which runs with the GIL: replies (correlated
frames whose id has the top bit set) resolve the future of their request;
every other frame goes to the ``on_message`` callback or a bounded queue.
Any thread may send meanwhile; many requests can be in flight.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _core
from ._errors import ConnectionClosed, Error, Timeout

if TYPE_CHECKING:
    from ._conn import Connection

__all__ = ["Duplex"]

REPLY = 1 << 63
_ID_MASK = REPLY - 1
# Receive workers are C threads that take the GIL to dispatch: stop them and
# wait for them (bounded) before the interpreter finalises.
atexit.register(_core.stop_workers, 1.0)

_EXPIRED_KEEP = 65536  # ids of timed-out requests remembered, to count late replies
Message = Union[bytes, tuple[int, bytes]]


class Duplex:
    """The asynchronous-duplex side of a :class:`sk.Connection`.

    Made by ``conn.start_receiver()`` (or on the first
    ``conn.request_async()``).  ``request_async(data, timeout)`` returns a
    ``concurrent.futures.Future`` resolved by the worker when the reply with
    the same correlation id arrives; a reply with an unknown id, a second
    reply, or a reply after its request timed out is dropped and counted in
    ``stats``, never misdelivered.  Frames that are not replies go to
    ``on_message`` (called in the worker thread, with the GIL) or, without a
    callback, to a bounded queue read with ``get()``; when it is full the
    worker stops reading and TCP's window pushes back on the peer.

    The connection must use ``sk.Framing(correlation=True)`` on both peers.

    Example::

        conn = sk.connect(addr, framing=sk.Framing(correlation=True))
        futs = [conn.request_async(b"req %d" % i, timeout=2.0) for i in range(100)]
        replies = [f.result() for f in futs]
    """

    def __init__(
        self,
        conn: "Connection",
        on_message: Optional[Callable[[Message], None]] = None,
        maxsize: int = 10_000,
    ) -> None:
        if not conn.framing.correlation:
            raise Error(
                "asynchronous requests need correlation ids: make the connection with "
                "sk.Framing(correlation=True) on both peers"
            )
        self._conn = conn
        self._on_message = on_message
        self._queue: "queue.Queue[Union[Message, BaseException]]" = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self._pending: dict[int, Future[bytes]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._expired: "OrderedDict[int, None]" = OrderedDict()
        self._ids = itertools.count(1)
        self._error: Optional[BaseException] = None
        self._stopped = threading.Event()
        self.stats = {"replies": 0, "unknown": 0, "late": 0, "messages": 0,
                      "callback_errors": 0, "timeouts": 0}
        conn._start_worker(self._dispatch)

    # ------------------------------------------------------------- requests

    def request_async(self, data: Union[bytes, bytearray, memoryview],
                      timeout: Optional[float] = None) -> "Future[bytes]":
        """Send ``data`` as a request and return a future for its reply.

        ``timeout`` (seconds) fails the future with ``sk.Timeout`` when no
        reply came; the reply, if it comes later, is dropped and counted in
        ``stats["late"]``.

        Example::

            fut = conn.request_async(b"ping", timeout=1.0)
            print(fut.result())
        """
        if self._error is not None:
            raise self._error
        fut: Future[bytes] = Future()
        rid = next(self._ids) & _ID_MASK
        # dict and heap updates are atomic under the GIL, which the worker
        # holds too while it dispatches: no extra lock on the hot path
        self._pending[rid] = fut
        if timeout is not None:
            with self._lock:
                heapq.heappush(self._deadlines, (time.monotonic() + timeout, rid))
        try:
            self._conn.send(data, timeout, rid)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        if self._error is not None and self._pending.pop(rid, None) is fut:
            # the receive side ended while we registered: nobody is left to
            # resolve or expire this future
            fut.set_exception(self._error)
        return fut

    def request(self, data: Union[bytes, bytearray, memoryview],
                timeout: Optional[float] = None) -> bytes:
        """``request_async(data, timeout).result()``, raising ``sk.Timeout``.

        Example::

            reply = conn.duplex.request(b"ping", timeout=1.0)
        """
        return self.request_async(data, timeout).result()

    def reply(self, request_id: int, data: Union[bytes, bytearray, memoryview],
              timeout: Optional[float] = None) -> None:
        """Answer a request received as ``(id, payload)``.

        Example::

            rid, payload = conn.get()
            conn.duplex.reply(rid, payload.upper())
        """
        self._conn.send(data, timeout, (request_id & _ID_MASK) | REPLY)

    @property
    def pending(self) -> int:
        """Requests in flight (sent, no reply yet, not timed out)."""
        return len(self._pending)

    # ------------------------------------------------------------- messages

    def get(self, timeout: Optional[float] = None) -> Message:
        """The next frame that is not a reply: ``bytes`` for a plain frame,
        ``(id, payload)`` for a request.  Raises ``sk.Timeout``, or the
        error that ended the connection.

        Example::

            msg = conn.duplex.get(timeout=1.0)
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise Timeout(f"get: no message within {timeout} s; nothing was lost") from None
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later get() sees it too
            raise item
        return item

    def stop(self) -> None:
        """Stop the worker (within 50 ms); pending requests stay pending.

        Example::

            conn.duplex.stop()
        """
        self._conn._stop_worker()

    # ------------------------------------------------------- worker side

    def _dispatch(self, batch: Union[list[Message], BaseException, None]) -> None:
        """Called by the C worker with the GIL: a batch of frames, None (an
        idle tick) or the exception that ended the receive side."""
        if isinstance(batch, BaseException):
            self._fail_all(batch)
            return
        if self._deadlines:
            self._expire()
        if not batch:
            return
        for item in batch:
            if isinstance(item, tuple) and item[0] & REPLY:
                rid = item[0] & _ID_MASK
                fut = self._pending.pop(rid, None)
                if fut is None:
                    if rid in self._expired:
                        self.stats["late"] += 1
                    else:
                        self.stats["unknown"] += 1
                    continue
                self.stats["replies"] += 1
                if not fut.done():
                    fut.set_result(item[1])
                continue
            self.stats["messages"] += 1
            if self._on_message is not None:
                try:
                    self._on_message(item)
                except Exception:
                    self.stats["callback_errors"] += 1
                continue
            while not self._stopped.is_set():
                try:
                    self._queue.put(item, timeout=0.05)  # full: push back on the peer
                    break
                except queue.Full:
                    if self._conn.closed:
                        return

    def _expire(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, rid = heapq.heappop(self._deadlines)
                fut = self._pending.pop(rid, None)
                if fut is not None:
                    expired.append(fut)
                    self._expired[rid] = None
                    if len(self._expired) > _EXPIRED_KEEP:
                        self._expired.popitem(last=False)
        for fut in expired:
            self.stats["timeouts"] += 1
            if not fut.done():
                fut.set_exception(Timeout("request_async: no reply in time; a late reply "
                                          "will be dropped (stats['late'])"))

    def _fail_all(self, exc: BaseException) -> None:
        if not isinstance(exc, Error):
            exc = ConnectionClosed(f"receive worker stopped: {exc!r}")
        self._error = exc
        with self._lock:
            pending, self._pending = self._pending, {}
            self._deadlines.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._stopped.set()
        try:
            self._queue.put_nowait(exc)
        except queue.Full:
            pass

    def __repr__(self) -> str:
        return f"<pysockkit.Duplex pending={self.pending} stats={self.stats}>"
