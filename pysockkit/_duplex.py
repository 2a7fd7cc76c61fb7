"""Asynchronous duplex over threads: a receive worker and pipelined requests.

The worker is a C thread (csrc/binding/conn.c, ``_start_worker``) that
waits for and decodes frames without the GIL.  Requests and their replies
never need Python there: ``request_async`` registers a C future in the
connection's request table and queues the frame in a write-behind buffer
that the worker writes out (one ``sendmsg`` for many requests); a reply
settles its future in the worker, without the GIL, waking whoever waits in
``result()``.  With ``Framing(correlation=True)`` a reply is the correlated
frame whose id is the request's with the top bit set, in any order; on
plain framing replies carry no id and come in order, so the n-th frame
that arrives while replies are owed answers the n-th request (csrc/core/corr.h,
in-order tables: the late-reply rule of the synchronous ``request``).  The worker
takes the GIL only for Python work, handed to :meth:`Duplex._dispatch` in
batches: frames that are not replies go to the ``on_message`` callback or
a bounded queue; futures with done-callbacks run them; the error that ended
the receive side fails every pending request.  Any thread may send
meanwhile; many requests can be in flight.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Optional, Union

from . import _core
from ._errors import ConnectionClosed, Error, Timeout
from ._net import check_timeout
from ._types import Message, RequestStats
from ._wire import reply_id

__all__ = ["Duplex", "Future"]

_first_worker = threading.Lock()  # held (never released) once the first worker started


def _on_first_worker() -> None:
    """What the first receive worker needs, done then and not at import:
    the C core makes its request futures of class :class:`Future`, and
    the workers (C threads that take the GIL to dispatch) are stopped and
    waited for (bounded) before the interpreter finalises."""
    if _first_worker.acquire(blocking=False):
        _core.set_future_class(Future)
        atexit.register(_core.stop_workers, 1.0)


class Future(_core.Future, concurrent.futures.Future[bytes]):
    """The future of a threaded-duplex request (``request_async``).

    A ``concurrent.futures.Future`` (a subclass: ``isinstance`` checks,
    ``concurrent.futures.wait``/``as_completed`` and ``asyncio.wrap_future``
    accept it) whose methods are implemented in C: the receive worker
    settles it without the GIL, and ``result()``/``exception()`` wait
    without the GIL.  ``result``, ``exception``, ``done``, ``cancel``,
    ``cancelled``, ``running`` (always False: a request is pending or
    settled), ``add_done_callback`` (called in the worker thread, or at once
    if already settled), ``set_result``/``set_exception`` behave as in
    ``concurrent.futures``.  Cancelling drops the reply when it comes; the
    request is not recalled.

    Example::

        fut = conn.request_async(b"ping", timeout=1.0)
        fut.add_done_callback(lambda f: print("got", f.result()))
        print(fut.result(), fut.done(), isinstance(fut, concurrent.futures.Future))
    """



class Duplex:
    """The asynchronous-duplex side of a :class:`sk.Connection`.

    Made by ``conn.start_receiver()`` (or on the first
    ``conn.request_async()``).  ``request_async(data, timeout)`` returns a
    :class:`Future` (a ``concurrent.futures.Future``) settled by the worker
    when the reply with the same correlation id arrives; a reply with an
    unknown id, a second reply, or a reply after its request timed out is
    dropped and counted in ``stats``, never misdelivered.  On plain framing
    (no ids) replies are matched in order: every frame that arrives while a
    reply is owed is the reply of the oldest request still owed one (a
    request that timed out still owes its reply, which is then dropped);
    other frames are messages.  A peer that drops a request without
    answering it shifts every later reply onto the request before: such
    peers need correlation ids (see ``sk.OutOfStep``).  Requests are
    written by the worker in batches (write-behind), so a burst of requests
    costs one syscall; a burst that outruns the peer blocks once 256 KiB
    are queued (backpressure, up to the request's timeout).  Frames that
    are not replies go to ``on_message`` (called in the worker thread, with
    the GIL) or, without a callback, to a bounded queue read with
    ``get()``; when it is full the worker stops reading and TCP's window
    pushes back on the peer.

    Example::

        conn = sk.connect(addr, framing=sk.Framing(correlation=True))
        futs = [conn.request_async(b"req %d" % i, timeout=2.0) for i in range(100)]
        replies = [f.result() for f in futs]
    """

    def __init__(
        self,
        conn: _core.Connection,
        on_message: Optional[Callable[[Message], None]] = None,
        maxsize: int = 10_000,
    ) -> None:
        self._conn = conn
        self._on_message = on_message
        self._queue: "queue.Queue[Union[Message, BaseException]]" = queue.Queue(maxsize)
        self._error: Optional[BaseException] = None
        self._stopped = threading.Event()
        self._counts = {"messages": 0, "callback_errors": 0}
        _on_first_worker()
        conn._start_worker(self._dispatch)

    # ------------------------------------------------------------- requests

    def request_async(self, data: Union[bytes, bytearray, memoryview],
                      timeout: Optional[float] = None) -> "concurrent.futures.Future[bytes]":
        """Send ``data`` as a request and return a :class:`Future` for its
        reply (a ``concurrent.futures.Future``).

        ``timeout`` (seconds) fails the future with ``sk.Timeout`` when no
        reply came; the reply, if it comes later, is dropped and counted in
        ``stats["late"]``.  On plain framing the future fails with
        ``sk.OutOfStep`` (a ``Timeout``) instead when a late reply was
        dropped while it waited: replies are arriving behind their
        requests (the peer is slower than the timeout, or dropped one).  An
        error reply (the peer's handler raised) fails it with
        ``sk.RemoteError``.  The request is queued and written by the
        receive worker with the others queued meanwhile; if 256 KiB are
        already queued (the peer reads slowly) this call first writes them
        out, waiting up to ``timeout``, and raises ``sk.Timeout`` (nothing of
        this request sent) if it cannot.

        Example::

            fut = conn.request_async(b"ping", timeout=1.0)
            print(fut.result())
        """
        return self._conn._request_async(data, timeout)

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
        self._conn.send(data, timeout, reply_id(request_id))

    @property
    def pending(self) -> int:
        """Requests in flight (sent, no reply yet, not timed out)."""
        return int(self._conn._request_stats()["pending"])

    @property
    def stats(self) -> RequestStats:
        """A snapshot of the counters (``sk.RequestStats``): ``replies``
        matched (``errors`` of them error replies, raised as
        ``sk.RemoteError``), ``unknown`` (no such request, or a second
        reply), ``late`` (after the request timed out), ``timeouts``,
        ``pending``, ``messages`` (frames that are not replies) and
        ``callback_errors`` (``on_message`` raised).

        Example::

            print(conn.duplex.stats["late"], conn.duplex.stats.replies)
        """
        st = self._conn._request_stats()
        return RequestStats(replies=st["replies"], errors=st["remote_errors"],
                            timeouts=st["timeouts"], late=st["late"], unknown=st["unknown"],
                            pending=st["pending"], messages=self._counts["messages"],
                            callback_errors=self._counts["callback_errors"])

    # ------------------------------------------------------------- messages

    def get(self, timeout: Optional[float] = None) -> Message:
        """The next frame that is not a reply: ``bytes`` for a plain frame,
        ``(id, payload)`` for a request.  Raises ``sk.Timeout``, or the
        error that ended the connection.

        Example::

            msg = conn.duplex.get(timeout=1.0)
        """
        timeout = check_timeout(timeout)
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
        """Called by the C worker with the GIL: a batch of frames that are
        not replies, or the exception that ended the receive side."""
        if isinstance(batch, BaseException):
            self._fail_all(batch)
            return
        if not batch:
            return
        for item in batch:
            self._counts["messages"] += 1
            if self._on_message is not None:
                try:
                    self._on_message(item)
                except Exception:
                    self._counts["callback_errors"] += 1
                continue
            while not self._stopped.is_set():
                try:
                    self._queue.put(item, timeout=0.05)  # full: push back on the peer
                    break
                except queue.Full:
                    if self._conn.closed:
                        return

    def _fail_all(self, exc: BaseException) -> None:
        if not isinstance(exc, Error):
            exc = ConnectionClosed(f"receive worker stopped: {exc!r}")
        self._error = exc
        self._conn._fail_requests(exc)
        self._stopped.set()
        try:
            self._queue.put_nowait(exc)
        except queue.Full:
            pass

    def __repr__(self) -> str:
        return f"<pysockkit.Duplex pending={self.pending} stats={self.stats}>"
