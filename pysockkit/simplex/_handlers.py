"""The message handler's side of a simplex server: a plain handler runs in
worker threads (or in each client's reader thread), an ``async def`` one on
an event loop in a thread of its own, the requests of a batch concurrently;
the outcomes become replies (or error replies) queued for the client's
writer."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from concurrent.futures import TimeoutError as _FutureTimeout
from typing import Any, Optional, Union

from .._handler import AsyncHandler, ExitBook, check_reply, error_text, is_async
from .._wire import error_id, reply_id
from ._session import _Session

_Buffer = Union[bytes, bytearray, memoryview]


class _Raised:
    """A handler's exception, carried as its outcome."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class Handlers:
    """Runs a server's handler on the batches its readers hand in.

    ``workers`` threads (started by the server with :meth:`work_loop`; 0:
    each batch runs in the reader that read it) for a plain handler; an
    event loop thread for an async one (started here).  ``errors`` counts
    the requests whose handler raised (answered with an error reply).

    Example::

        run = Handlers(bytes.upper, max_frame, ExitBook("simplex.Server"), workers=2)
        run.submit(session, [(1, b"hi")])     # the reply lands in session.out
    """

    def __init__(self, handler: AsyncHandler, max_frame: int, book: ExitBook,
                 workers: int) -> None:
        self._handler = handler
        self._max_frame = max_frame
        self._book = book
        self.workers = workers
        self.errors = 0
        self._lock = threading.Lock()
        self._qcond = threading.Condition(self._lock)
        self._queue: deque[Optional[tuple[_Session, list[tuple[int, bytes]]]]] = deque()
        self._closing = False
        self._aloop: Optional[asyncio.AbstractEventLoop] = None
        self._athread: Optional[threading.Thread] = None
        if is_async(handler):
            self.start_loop()

    def submit(self, sess: _Session, reqs: list[tuple[int, bytes]]) -> None:
        """Hand a batch of requests to the handler (see the class docstring)."""
        if self._aloop is not None:
            asyncio.run_coroutine_threadsafe(self._handle_async(sess, reqs), self._aloop)
            return
        if self.workers == 0:
            self._handle(sess, reqs)
            return
        with self._lock:
            step = 64
            for i in range(0, len(reqs), step):
                self._queue.append((sess, reqs[i:i + step]))
            self._qcond.notify(min(self.workers, (len(reqs) + step - 1) // step))

    def stop_workers(self) -> None:
        """Let the workers end (before the sessions close)."""
        with self._lock:
            self._closing = True
            self._queue.extendleft([None] * self.workers)
            self._qcond.notify_all()

    def work_loop(self) -> None:
        """A worker thread: run the batches queued by submit()."""
        while True:
            with self._lock:
                while not self._queue:
                    self._qcond.wait(1.0)
                    if self._closing and not self._queue:
                        return
                item = self._queue.popleft()
            if item is None:
                return
            self._handle(*item)

    def _handle(self, sess: _Session, reqs: list[tuple[int, bytes]]) -> None:
        """Run a plain handler on a batch and queue the replies for the writer."""
        if sess.dead:
            return
        handler = self._handler
        outcomes: list[Any] = []
        for _rid, payload in reqs:
            try:
                outcomes.append(handler(payload))
            except Exception as exc:
                outcomes.append(_Raised(exc))
        self._finish(sess, reqs, outcomes)

    async def _handle_async(self, sess: _Session, reqs: list[tuple[int, bytes]]) -> None:
        """Run an async handler on a batch, the requests concurrently, on
        the server's event loop; queue the replies for the writer."""
        if sess.dead:
            return
        handler = self._handler

        async def one(payload: bytes) -> Any:
            try:
                r = handler(payload)
                return (await r) if inspect.isawaitable(r) else r
            except Exception as exc:
                return _Raised(exc)

        outcomes = await asyncio.gather(*(one(p) for _, p in reqs))
        self._finish(sess, reqs, outcomes)

    def _finish(self, sess: _Session, reqs: list[tuple[int, bytes]], outcomes: list[Any]) -> None:
        """Turn the handler's outcomes into replies (or error replies) for
        the writer; a None outcome answers nothing."""
        out: list[tuple[int, _Buffer]] = []
        errors = 0
        skipped = 0
        delta = 0
        max_frame = self._max_frame
        for (rid, payload), r in zip(reqs, outcomes):
            delta -= len(payload)
            try:
                if r.__class__ is _Raised:
                    raise r.exc
                reply = check_reply("simplex.Server", r, max_frame)
            except Exception as exc:
                errors += 1
                self._book.handler_error(exc, sess.peer, True)
                msg = error_text(exc, max_frame)
                out.append((error_id(rid), msg))
                delta += len(msg)
                continue
            if reply is None:
                skipped += 1
                continue
            out.append((reply_id(rid), reply))
            delta += len(reply)
        if errors:
            with self._lock:
                self.errors += errors
        with sess.cond:
            sess.out.extend(out)
            sess.inflight -= skipped
            sess.inflight_bytes += delta
            sess.cond.notify_all()

    def start_loop(self) -> None:
        """The event loop an async handler runs on, in its own thread."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._aloop = loop
        self._athread = threading.Thread(target=run, name="pysockkit-simplex-loop", daemon=True)
        self._athread.start()
        ready.wait(5.0)

    def stop_loop(self, deadline: Optional[float]) -> None:
        """Cancel the async handlers still running, stop and close the loop."""
        loop, thread = self._aloop, self._athread
        if loop is None or thread is None or loop.is_closed():
            return

        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        left = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(left)
        except (_FutureTimeout, RuntimeError):
            pass  # a handler that ignores cancellation: give up on it
        loop.call_soon_threadsafe(loop.stop)
        thread.join(None if deadline is None else max(0.1, deadline - time.monotonic()))
        if not thread.is_alive():
            loop.close()
