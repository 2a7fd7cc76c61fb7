"""The client of a simplex pair: requests on one link, replies on the other,
matched by correlation id in a receiver thread."""

from __future__ import annotations

import os
import select
import threading
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as _FutureTimeout
from types import TracebackType
from typing import Any, Optional, Union

from .. import _core
from .._conn import Connection
from .._errors import (
    ConnectionClosed,
    ConnectionReset,
    Error,
    FrameTooLarge,
    IncompleteFrame,
    PeerDead,
    RemoteError,
    Timeout,
)
from .._net import AddressLike, check_timeout, format_address, parse_address
from .._types import Framing, Heartbeat, RequestStats
from ._handshake import (
    ERROR,
    ID_MASK,
    REPLY,
    _check_framing,
    _log,
    _ROLE_REPLY,
    _ROLE_REQUEST,
    open_link,
)

_Buffer = Union[bytes, bytearray, memoryview]
_DELIVER = _core.CORR_DELIVER
_CHECK_EVERY = 0.05  # s: how often the receiver checks the request link
# s: longest receiver wait, so request_async timeouts fire within this of
# their deadline (an idle client wakes 20 times a second, in C, for ~10 us)
_SLICE = 0.05


class _Failure:
    """Why the client stopped: the link, what happened, the original error."""

    __slots__ = ("cls", "link", "what", "cause")

    def __init__(self, cls: type[Error], link: str, what: str, cause: Optional[BaseException]):
        self.cls = cls
        self.link = link
        self.what = what
        self.cause = cause

    def make(self, tail: str) -> Error:
        exc = self.cls(f"{self.link} {self.what}; {tail}")
        exc.__cause__ = self.cause
        return exc


def _dead(hb: Optional[Heartbeat]) -> str:
    limit = f"within {hb.timeout:g} s" if hb is not None else "in time"
    return f"is dead: nothing received from the peer {limit} (heartbeat)"


def _describe(exc: BaseException, hb: Optional[Heartbeat] = None) -> tuple[type[Error], str]:
    """(error class, words) for a link that failed with exc."""
    if isinstance(exc, PeerDead):
        return PeerDead, _dead(hb)
    if isinstance(exc, ConnectionReset):
        return ConnectionReset, "was reset (RST)"
    if isinstance(exc, IncompleteFrame):
        return IncompleteFrame, "closed in the middle of a frame"
    if isinstance(exc, ConnectionClosed):
        return ConnectionClosed, "closed"
    if isinstance(exc, FrameTooLarge):
        return FrameTooLarge, f"is broken ({exc})"
    if isinstance(exc, Error):
        return type(exc), f"failed ({exc})"
    return Error, f"failed ({exc!r})"


_Entry = tuple["Future[bytes]", Optional[float]]  # future, timeout


class Client:
    """The client of a simplex pair: requests go out on the request link,
    replies come back on the reply link and are matched by correlation id.

    Connecting opens the reply link first, registers a random session token
    on it, then opens the request link with the same token (see
    docs/PROTOCOL.md, "Simplex links").  A receiver thread reads the reply
    link in batches and resolves the futures of :meth:`request_async`.

    * ``framing`` must have ``correlation=True`` (the default here) and match
      the server's; ``heartbeat`` must match the server's too.  With
      heartbeats both links carry PING/PONG both ways, so the unused
      directions stay open for control frames only; without, they are shut
      down.
    * ``max_pending`` bounds the requests in flight: a new request waits for
      a free slot, up to its own timeout.
    * ``connect_timeout`` bounds connecting both links and the handshake.

    When either link drops, every pending request fails with a typed error
    naming the link, and so does every later call: there is no automatic
    reconnect (a new ``Client`` is a new session; a request that failed may
    or may not have reached the handler, so resend only what is safe to
    repeat).  Replies to unknown ids, duplicate and late replies are dropped
    and counted in :attr:`stats`.

    Example::

        with simplex.Client(("127.0.0.1", 5000), ("127.0.0.1", 5001)) as cli:
            print(cli.request(b"ping", timeout=1.0))
            futs = [cli.request_async(b"x", timeout=5.0) for _ in range(1000)]
            replies = [f.result() for f in futs]
            print(cli.stats)
    """

    def __init__(
        self,
        request_addr: AddressLike,
        reply_addr: AddressLike,
        framing: Optional[Framing] = None,
        heartbeat: Optional[Heartbeat] = None,
        *,
        max_pending: int = 10_000,
        connect_timeout: Optional[float] = 10.0,
        batch: int = 1024,
    ) -> None:
        request_addr = parse_address(request_addr, name="request_addr")
        reply_addr = parse_address(reply_addr, name="reply_addr")
        connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        self._framing = _check_framing(framing)
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self._hb = heartbeat
        self._max_pending = max_pending
        self._batch = batch
        self._token = os.urandom(16)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # the request ids, their deadlines, the memory of expired ids and the
        # verdict on every reply: the C core's correlation book (csrc/core/corr.c,
        # the threaded duplex's rules); the futures by id stay here
        self._book = _core.CorrelationBook()
        self._pending: dict[int, _Entry] = {}
        self._issued = 0  # ids taken from the book
        self._waiting = 0  # threads waiting for a free slot
        self._failure: Optional[_Failure] = None
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._unsent = 0  # ids taken whose send failed: sent = next_id - 1 - unsent
        self._n = {"timeouts": 0, "failed": 0, "unexpected": 0}  # the rest: self._book.stats
        self._addrs = (format_address(request_addr), format_address(reply_addr))
        self._names = {
            "request": f"simplex request link to {self._addrs[0]}",
            "reply": f"simplex reply link to {self._addrs[1]}",
            "client": "simplex client",
        }
        deadline = None if connect_timeout is None else time.monotonic() + connect_timeout
        self._reply: Connection = open_link(
            reply_addr, _ROLE_REPLY, self._names["reply"], self._token,
            self._framing, heartbeat, deadline)
        try:
            self._request: Connection = open_link(
                request_addr, _ROLE_REQUEST, self._names["request"], self._token,
                self._framing, heartbeat, deadline)
        except BaseException:
            self._reply.close()
            raise
        hb = heartbeat is not None
        self._poll = select.poll()
        # without heartbeats the server sent FIN on the request link: only an
        # error/hangup (an RST answering our data) says it is gone.  With
        # heartbeats its FIN is news too.
        self._poll.register(
            self._request.fileno(), select.POLLRDHUP if hb else 0  # ERR/HUP always
        )
        self._thread = threading.Thread(
            target=self._receive_loop, name="pysockkit-simplex-rx", daemon=True
        )
        self._thread.start()

    # --------------------------------------------------------- requests

    def request_async(self, data: _Buffer, timeout: Optional[float] = None) -> "Future[bytes]":
        """Send ``data`` on the request link and return a
        ``concurrent.futures.Future`` for its reply (many may be in flight).

        ``timeout`` (seconds, None: no limit) covers waiting for a free slot
        (``max_pending``), sending, and the reply: the future then fails
        with ``sk.Timeout`` (within ~50 ms of the deadline), and the reply,
        if it comes later, is dropped and counted in ``stats.late``.  A
        handler error on the server fails it with :class:`RemoteError`; a
        dropped link with the link's error.  Errors found before the request
        is sent (client closed or failed, no free slot in time, a send
        timeout) are raised here.  Do not block in done-callbacks: they run
        in the receiver thread.

        Example::

            futs = [cli.request_async(b"%d" % i, timeout=2.0) for i in range(1000)]
            replies = [f.result() for f in futs]
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        fut: Future[bytes] = Future()
        self._submit(data, timeout, fut)
        return fut

    def request(self, data: _Buffer, timeout: Optional[float] = None) -> bytes:
        """Send ``data`` and wait for its reply; raises ``sk.Timeout`` after
        ``timeout`` seconds (a late reply is dropped and counted, never
        returned by another request), :class:`RemoteError`, or the error of
        a dropped link.

        Example::

            reply = cli.request(b"ping", timeout=1.0)
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        fut: Future[bytes] = Future()
        rid = self._submit(data, timeout, fut)
        if timeout is None:
            return fut.result()
        try:
            return fut.result(timeout)
        except _FutureTimeout:
            if fut.done():  # the receiver failed it with sk.Timeout, or it just came
                return fut.result()
            self._expire_one(rid)
            return fut.result()

    def _submit(self, data: _Buffer, timeout: Optional[float], fut: "Future[bytes]") -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._failure is not None:
                raise self._failure.make("this client cannot send any more "
                                         "(no automatic reconnect: make a new simplex.Client)")
            if len(self._pending) >= self._max_pending:
                self._wait_slot(deadline)
            rid = self._book.register(deadline)
            self._issued += 1
            self._pending[rid] = (fut, timeout)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._request.send(data, left, rid)
        except Timeout as exc:
            # The frame may be half-written: its tail goes out with the next
            # send and the server may still answer, so the id is remembered
            # as expired (a reply then counts as late).
            self._expire_one(rid, fail=False)
            with self._lock:
                self._unsent += 1
            raise Timeout(
                f"{self._names['request']}: request {rid} not sent within {timeout} s "
                "(the server is not reading); a late reply will be dropped"
            ) from exc
        except FrameTooLarge:
            with self._lock:  # refused before anything went out: the link is fine
                self._book.unsend(rid)
                self._pending.pop(rid, None)
                self._unsent += 1
            raise
        except Error as exc:
            cls, what = _describe(exc, self._hb)
            self._fail("request", cls, what, exc)
            with self._lock:
                self._unsent += 1
                failure = self._failure
            assert failure is not None
            raise failure.make("the request was not sent") from exc
        except BaseException as exc:
            if getattr(exc, "sent", 0):
                # Ctrl-C half-way through the frame: its tail goes out with
                # the next send and the server will answer it, so the id is
                # remembered as expired (that reply then counts as late)
                self._expire_one(rid, fail=False)
            else:
                with self._lock:  # bad data type, Ctrl-C before any byte: nothing went out
                    self._book.unsend(rid)
                    self._pending.pop(rid, None)
            with self._lock:
                self._unsent += 1
            raise
        return rid

    def _wait_slot(self, deadline: Optional[float]) -> None:
        """With the lock held: wait until fewer than max_pending are in flight."""
        self._waiting += 1
        try:
            while len(self._pending) >= self._max_pending:
                if self._failure is not None:
                    raise self._failure.make("this client cannot send any more")
                if deadline is None:
                    self._cond.wait(1.0)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(
                        f"simplex client: {self._max_pending} requests in flight "
                        "(max_pending) and none answered in time; this request was not sent"
                    )
                self._cond.wait(min(left, 1.0))
        finally:
            self._waiting -= 1

    def _expire_one(self, rid: int, fail: bool = True) -> None:
        """Time out request rid if still pending (its late reply is counted)."""
        with self._lock:
            entry = self._pending.pop(rid, None)
            if entry is None:
                return
            self._book.forget(rid)  # remembered: its reply, if it comes, is late
            self._n["timeouts"] += 1
            if self._waiting:
                self._cond.notify()
        if fail:
            self._set_timeout(rid, entry)
        else:
            entry[0].cancel()

    @staticmethod
    def _set_timeout(rid: int, entry: _Entry) -> None:
        try:
            entry[0].set_exception(Timeout(
                f"simplex request {rid}: no reply within {entry[1]} s; a late reply "
                "will be dropped (stats.late)"))
        except InvalidStateError:
            pass  # cancelled by the caller

    # --------------------------------------------------------- receiver

    def _receive_loop(self) -> None:
        """The receiver thread: read reply batches, resolve futures, expire
        timed-out requests, watch the request link.  Ends when a link drops
        or close() closes the reply link."""
        try:
            self._receive()
        except BaseException as exc:  # a bug must not leave futures hanging
            self._fail("reply", Error, f"lost its receiver thread ({exc!r})", exc)
            raise

    def _receive(self) -> None:
        reply = self._reply
        next_check = 0.0
        next_deadline = self._book.next_deadline
        while True:
            due = next_deadline()
            wait = _SLICE if due is None else min(_SLICE, max(0.0, due - time.monotonic()))
            frames: list[Any]
            try:
                frames = reply.recv_many(self._batch, wait)
            except Timeout:
                frames = []
            except Error as exc:
                if not self._closed:
                    cls, what = _describe(exc, self._hb)
                    self._fail("reply", cls, what, exc)
                return
            if frames:
                self._deliver(frames)
            now = time.monotonic()
            due = next_deadline()
            if due is not None and due <= now:
                self._expire(now)
            if now >= next_check and self._pending:
                next_check = now + _CHECK_EVERY
                if self._check_request_link():
                    return

    def _deliver(self, frames: list[Any]) -> None:
        """Hand the replies of one batch to their futures; the book says
        which reply is whose and counts the ones it drops (late,
        duplicate, unknown)."""
        done = []
        with self._lock:
            pending = self._pending
            settle = self._book.settle
            for fr in frames:
                if type(fr) is tuple and fr[0] & REPLY:
                    rid = fr[0]
                    if settle(rid) == _DELIVER:
                        done.append((pending.pop(rid & ID_MASK)[0], fr[1], rid & ERROR))
                else:
                    self._n["unexpected"] += 1
            if done and self._waiting:
                self._cond.notify(len(done))
        for fut, payload, err in done:
            try:
                if err:
                    fut.set_exception(RemoteError(payload.decode(errors="replace")))
                else:
                    fut.set_result(payload)
            except InvalidStateError:
                pass  # the caller cancelled it

    def _expire(self, now: float) -> None:
        """Time out the requests whose deadline passed (the book takes them
        out and remembers them: their replies will be late)."""
        with self._lock:
            pending = self._pending
            expired = [(rid, pending.pop(rid)) for rid, _ in self._book.expire(now)]
            if expired and self._waiting:
                self._cond.notify(len(expired))
        for rid, entry in expired:
            self._set_timeout(rid, entry)

    def _check_request_link(self) -> bool:
        """Poll the request link for a hangup; fail the client if it is gone."""
        try:
            events = self._poll.poll(0)
        except (OSError, ValueError):
            return False
        if not events or self._closed:
            return False
        ev = events[0][1]
        if self._hb is not None and self._request.heartbeat_stats.get("peer_dead"):
            self._fail("request", PeerDead, _dead(self._hb), None)
        elif ev & select.POLLERR:
            self._fail("request", ConnectionReset, "was reset (RST)", None)
        elif ev & (select.POLLHUP | select.POLLRDHUP):
            self._fail("request", ConnectionClosed, "closed", None)
        else:
            return False
        return True

    def _fail(self, link: str, cls: type[Error], what: str, cause: Optional[BaseException]) -> None:
        """A link dropped: fail every pending request, once, naming it."""
        with self._lock:
            if self._failure is not None:
                return
            if self._closed and link != "client":  # close() closed the link, not the peer
                link, cls, cause = "client", ConnectionClosed, None
                what = "was closed by this program"
            failure = _Failure(cls, self._names[link], what, cause)
            self._failure = failure
            pending, self._pending = self._pending, {}
            for rid in pending:  # out of the book too: nothing will settle them now
                self._book.unsend(rid)
            self._n["failed"] += len(pending)
            self._cond.notify_all()
        if link != "client":  # the client is done: free both links now
            self._request.close()
            self._reply.close()
        tail = f"{len(pending)} pending requests failed"
        for entry in pending.values():
            try:
                entry[0].set_exception(failure.make(tail))
            except InvalidStateError:
                pass
        _log.info("%s %s; %d pending requests failed", failure.link, what, len(pending))

    # ------------------------------------------------------------- misc

    @property
    def stats(self) -> RequestStats:
        """A snapshot of the counters (``sk.RequestStats``, also known as
        :data:`ClientStats`).

        Example::

            s = cli.stats
            print(s.sent, s.replied, s.late, s.unknown, s.duplicate)
        """
        with self._lock:
            b = self._book.stats
            return RequestStats(requests=self._issued - self._unsent,
                                pending=len(self._pending), replies=b["replies"],
                                errors=b["remote_errors"],
                                timeouts=b["timeouts"] + self._n["timeouts"],
                                failed=self._n["failed"], late=b["late"],
                                duplicate=b["duplicate"], unknown=b["unknown"],
                                unexpected=self._n["unexpected"])

    @property
    def pending(self) -> int:
        """Requests in flight now.

        Example::

            >>> cli.pending
            0
        """
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran or a link dropped.

        Example::

            >>> cli.closed
            False
        """
        return self._closed or self._failure is not None

    @property
    def session(self) -> str:
        """The session token (hex) that pairs the two links on the server.

        Example::

            >>> cli.session
            '3f9c0a...'
        """
        return self._token.hex()

    @property
    def request_link(self) -> Connection:
        """The request link's :class:`sk.Connection` (for ``info()``,
        ``state``, addresses; do not send or receive on it).

        Example::

            >>> cli.request_link.state
            <TcpState.CLOSE_WAIT: 8>
        """
        return self._request

    @property
    def reply_link(self) -> Connection:
        """The reply link's :class:`sk.Connection` (read by the receiver
        thread; use it only to look).

        Example::

            >>> cli.reply_link.state
            <TcpState.FIN_WAIT_2: 5>
        """
        return self._reply

    def close(self, timeout: Optional[float] = 5.0) -> None:
        """Close both links; pending requests fail with
        ``sk.ConnectionClosed``.  Waits up to ``timeout`` for the receiver
        thread.  Idempotent.

        Example::

            cli.close()
        """
        timeout = check_timeout(timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._request.close()
        self._reply.close()  # wakes the receiver thread
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._fail("client", ConnectionClosed, "was closed by this program", None)

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"pending={len(self._pending)}"
        return (f"<pysockkit.simplex.Client request={self._addrs[0]} "
                f"reply={self._addrs[1]} {state}>")
