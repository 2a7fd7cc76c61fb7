"""Asynchronous simplex mode: requests on one link, replies on another.

A *simplex link* carries data one way only.  Here a client talks to a server
over two TCP connections:

* the **request link** carries requests client -> server;
* the **reply link** carries replies server -> client.

Each request is a correlated frame (``sk.Framing(correlation=True)``, see
docs/PROTOCOL.md) whose id the server echoes with the top bit set, so a
reply arriving on the reply link is matched to its request by id, in any
order.  Without heartbeats, the unused direction of each link is shut down:
the client sends FIN on the reply link right after its registration frame,
the server sends FIN on the request link right after its acknowledgement.

The handshake that pairs the two links of one client (a 16-byte random
session token, sent first on the reply link, then on the request link) is
documented frame by frame in docs/PROTOCOL.md, "Simplex links".

Rules kept here:

* a reply is delivered only to the request with its id; ids are never
  reused, so a reply arriving after its request timed out is dropped and
  counted (``stats.late``), never handed to another request;
* replies with an unknown id, second replies, and frames that are not
  replies are dropped and counted;
* memory is bounded on both sides: ``max_pending`` requests in flight per
  client (``request`` waits for a free slot, up to its timeout), and on the
  server ``max_inflight`` unanswered requests per client; a client that does
  not read its replies is dropped after ``send_timeout``;
* when a link drops, every pending request fails at once with a typed error
  naming the link (``sk.ConnectionClosed``, ``sk.ConnectionReset``,
  ``sk.PeerDead``); there is **no automatic reconnect**: the client is done,
  make a new :class:`Client` (a new session).

Example::

    from pysockkit import simplex

    with simplex.Server(("127.0.0.1", 0), ("127.0.0.1", 0), bytes.upper) as srv, \\
         simplex.Client(srv.request_address, srv.reply_address) as cli:
        print(cli.request(b"hello", timeout=2.0))          # b'HELLO'
        futs = [cli.request_async(b"%d" % i, timeout=2.0) for i in range(100)]
        print(sum(len(f.result()) for f in futs))          # 190
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import os
import select
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as _FutureTimeout
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Optional, Union, cast

from . import _wire
from ._conn import Address, Connection, Listener, connect, listen
from ._errors import (
    ConnectionClosed,
    ConnectionReset,
    Error,
    FrameTooLarge,
    IncompleteFrame,
    PeerDead,
    RemoteError,
    Timeout,
)
from ._handler import (
    AsyncHandler,
    ExitBook,
    accept_loop,
    check_handlers,
    check_reply,
    error_text,
    is_async,
)
from ._net import AddressLike, check_timeout, format_address, parse_address
from ._types import Framing, Heartbeat, RequestStats
from ._wire import error_id, reply_id

__all__ = [
    "Client",
    "Server",
    "ClientStats",
    "ServerStats",
    "RemoteError",
    "HandshakeError",
    "Handler",
    "REPLY",
    "ERROR",
    "ID_MASK",
]

_log = logging.getLogger("pysockkit.simplex")
_log.addHandler(logging.NullHandler())  # a library: silent unless the program configures logging
_Buffer = Union[bytes, bytearray, memoryview]
Handler = AsyncHandler
"""A server's message handler: ``handler(payload) -> reply | None``, a
plain function (run in the worker threads) or an ``async def`` one (run on
the server's event loop thread, concurrently); None sends no reply (the
client's request then times out: use it for one-way messages).
Example: ``simplex.Server(req, rep, lambda b: b.upper())``."""

REPLY: int = _wire.ID_REPLY
"""Id bit set on every reply frame (docs/PROTOCOL.md, "Simplex links"); the
C core's constant (``pysockkit._core.ID_REPLY``, read by ``pysockkit._wire``).
Example: a hand-written server answers ``conn.send(reply, id=rid | simplex.REPLY)``."""
ERROR: int = _wire.ID_ERROR
"""Id bit set, with REPLY, on a reply whose handler failed; the payload is
the error text.  Example: ``conn.send(b"ValueError: bad", id=rid | REPLY | ERROR)``."""
ID_MASK: int = _wire.ID_MASK
"""Request ids are 1 .. ID_MASK; ``reply_id & ID_MASK`` is the request's id.
Example: ``request_id = reply_id & simplex.ID_MASK``."""

# ------------------------------------------------------------ handshake
#
# HELLO (client -> server, first frame on each link, a plain frame):
#   "SKSX" | version 1 | role | flags | 0 | token (16 bytes)       24 bytes
# ACK (server -> client, first frame on each link, a plain frame):
#   "SKSX" | version 1 | status | flags | 0 | reason (UTF-8)      8+ bytes

_MAGIC = b"SKSX"
_VERSION = 1
_HELLO = struct.Struct("!4sBBBB16s")
_ACK = struct.Struct("!4sBBBB")
_ROLE_REPLY = 1
_ROLE_REQUEST = 2
_ROLE_NAME = {_ROLE_REPLY: "reply", _ROLE_REQUEST: "request"}
_FLAG_HEARTBEAT = 0x01
_ST_OK = 0
_ST_BAD_HELLO = 1
_ST_UNKNOWN_SESSION = 2
_ST_BUSY = 3
_ST_DUPLICATE = 4
_ST_HEARTBEAT = 5
_ST_WRONG_LINK = 6
_STATUS_NAME = {
    _ST_OK: "ok",
    _ST_BAD_HELLO: "malformed registration",
    _ST_UNKNOWN_SESSION: "unknown session",
    _ST_BUSY: "server busy",
    _ST_DUPLICATE: "duplicate session token",
    _ST_HEARTBEAT: "heartbeat setting differs",
    _ST_WRONG_LINK: "wrong link",
}
_EXPIRED_KEEP = 65536  # ids of timed-out requests remembered to count late replies
_CHECK_EVERY = 0.05  # s: how often the receiver checks the request link
# s: longest receiver wait, so request_async timeouts fire within this of
# their deadline (an idle client wakes 20 times a second, in C, for ~10 us)
_SLICE = 0.05
_CORRELATED = Framing(correlation=True)


def _check_framing(framing: Optional[Framing]) -> Framing:
    if framing is None:
        return _CORRELATED
    if not framing.correlation:
        raise ValueError(
            "simplex links need correlation ids: pass sk.Framing(correlation=True, ...) "
            "(the same on client and server)"
        )
    return framing


def _hello(role: int, token: bytes, heartbeat: bool) -> bytes:
    return _HELLO.pack(_MAGIC, _VERSION, role, _FLAG_HEARTBEAT if heartbeat else 0, 0, token)


def _ack(status: int, heartbeat: bool, reason: str = "") -> bytes:
    flags = _FLAG_HEARTBEAT if heartbeat else 0
    return _ACK.pack(_MAGIC, _VERSION, status, flags, 0) + reason.encode()[:512]


# RemoteError (the server's handler raised) is sk.RemoteError, the same
# class for every client that matches replies by id; imported above and
# exported here as simplex.RemoteError.


class HandshakeError(Error):
    """The server refused or broke the link handshake (wrong port, busy,
    heartbeat setting or framing that differs).  ``exc.status`` is the
    status code of the server's acknowledgement (docs/PROTOCOL.md), or -1
    when no valid acknowledgement came.

    Example::

        try:
            simplex.Client(req_addr, reply_addr, connect_timeout=2.0)
        except simplex.HandshakeError as exc:
            print("refused:", exc, exc.status)
    """

    status: int = -1


def _handshake_error(msg: str, status: int = -1) -> HandshakeError:
    exc = HandshakeError(msg)
    exc.status = status
    return exc


# ------------------------------------------------------------------ stats


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


# ----------------------------------------------------------------- client


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


_Entry = tuple["Future[bytes]", Optional[float], Optional[float]]  # future, deadline, timeout


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
        self._pending: dict[int, _Entry] = {}
        self._heap: list[tuple[float, int]] = []
        self._expired: OrderedDict[int, None] = OrderedDict()
        self._next_id = 1
        self._waiting = 0  # threads waiting for a free slot
        self._failure: Optional[_Failure] = None
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._unsent = 0  # ids taken whose send failed: sent = next_id - 1 - unsent
        self._n = {"replies": 0, "errors": 0, "timeouts": 0, "failed": 0, "late": 0,
                   "duplicate": 0, "unknown": 0, "unexpected": 0}
        self._addrs = (format_address(request_addr), format_address(reply_addr))
        self._names = {
            "request": f"simplex request link to {self._addrs[0]}",
            "reply": f"simplex reply link to {self._addrs[1]}",
            "client": "simplex client",
        }
        deadline = None if connect_timeout is None else time.monotonic() + connect_timeout
        self._reply: Connection = self._open(reply_addr, _ROLE_REPLY, deadline)
        try:
            self._request: Connection = self._open(request_addr, _ROLE_REQUEST, deadline)
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

    # ---------------------------------------------------------- connect

    def _open(self, addr: Address, role: int, deadline: Optional[float]) -> Connection:
        """Connect one link and run its half of the handshake."""
        name = self._names["reply" if role == _ROLE_REPLY else "request"]

        def left() -> Optional[float]:
            if deadline is None:
                return None
            return max(0.0, deadline - time.monotonic())

        hb = self._hb is not None
        try:
            conn = connect(addr, timeout=left(), framing=self._framing, heartbeat=self._hb)
        except OSError as exc:
            note = getattr(exc, "add_note", None)  # Python 3.11+
            if note is not None:
                note(f"while connecting the {name}")
            raise
        try:
            conn.send(_hello(role, self._token, hb), timeout=left())
            if role == _ROLE_REPLY and not hb:
                conn.shutdown("write", timeout=left())  # the reply link is server -> client
            try:
                ack: Any = conn.recv(timeout=left())
            except Timeout as exc:
                raise _handshake_error(
                    f"{name}: no acknowledgement from the server within the connect "
                    "timeout (is it a simplex.Server, with the same Framing?)"
                ) from exc
            except Error as exc:
                raise _handshake_error(
                    f"{name}: the server closed the link during the handshake ({exc}); "
                    "check the address, the port order (request, reply) and that both "
                    "sides use the same Framing and heartbeat setting"
                ) from exc
            if not isinstance(ack, bytes) or len(ack) < _ACK.size or ack[:4] != _MAGIC:
                raise _handshake_error(f"{name}: the peer is not a pysockkit simplex server")
            _m, version, status, flags, _r = _ACK.unpack_from(ack)
            if status != _ST_OK:
                reason = ack[_ACK.size:].decode(errors="replace")
                raise _handshake_error(
                    f"{name}: refused by the server: {_STATUS_NAME.get(status, status)}"
                    + (f" ({reason})" if reason else ""),
                    status,
                )
            if bool(flags & _FLAG_HEARTBEAT) != hb:
                raise _handshake_error(f"{name}: the server's heartbeat setting differs")
            if role == _ROLE_REQUEST and not hb:
                conn.shutdown("read")  # local only: the server already sent FIN
        except BaseException:
            conn.close()
            raise
        return conn

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
            rid = self._next_id
            self._next_id = rid + 1
            self._pending[rid] = (fut, deadline, timeout)
            if deadline is not None:
                heapq.heappush(self._heap, (deadline, rid))
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
            self._remember_expired(rid)
            self._n["timeouts"] += 1
            if self._waiting:
                self._cond.notify()
        if fail:
            self._set_timeout(rid, entry)
        else:
            entry[0].cancel()

    def _remember_expired(self, rid: int) -> None:
        self._expired[rid] = None
        if len(self._expired) > _EXPIRED_KEEP:
            self._expired.popitem(last=False)

    @staticmethod
    def _set_timeout(rid: int, entry: _Entry) -> None:
        try:
            entry[0].set_exception(Timeout(
                f"simplex request {rid}: no reply within {entry[2]} s; a late reply "
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
        while True:
            heap = self._heap
            wait = min(_SLICE, max(0.0, heap[0][0] - time.monotonic())) if heap else _SLICE
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
            if self._heap and self._heap[0][0] <= now:
                self._expire(now)
            if now >= next_check and self._pending:
                next_check = now + _CHECK_EVERY
                if self._check_request_link():
                    return

    def _deliver(self, frames: list[Any]) -> None:
        done = []
        n = self._n
        with self._lock:
            pending = self._pending
            for fr in frames:
                if type(fr) is tuple:
                    rid = fr[0]
                    if rid & REPLY:
                        key = rid & ID_MASK
                        entry = pending.pop(key, None)
                        if entry is not None:
                            done.append((entry[0], fr[1], rid & ERROR))
                        elif key in self._expired:
                            del self._expired[key]
                            n["late"] += 1
                        elif 0 < key < self._next_id:
                            n["duplicate"] += 1
                        else:
                            n["unknown"] += 1
                        continue
                n["unexpected"] += 1
            n["replies"] += len(done)
            if done and self._waiting:
                self._cond.notify(len(done))
        errors = 0
        for fut, payload, err in done:
            try:
                if err:
                    errors += 1
                    fut.set_exception(RemoteError(payload.decode(errors="replace")))
                else:
                    fut.set_result(payload)
            except InvalidStateError:
                pass  # the caller cancelled it
        if errors:
            with self._lock:
                n["errors"] += errors

    def _expire(self, now: float) -> None:
        expired = []
        with self._lock:
            heap, pending = self._heap, self._pending
            while heap and heap[0][0] <= now:
                _, rid = heapq.heappop(heap)
                entry = pending.pop(rid, None)
                if entry is not None:  # else answered already: a stale heap entry
                    expired.append((rid, entry))
                    self._remember_expired(rid)
            self._n["timeouts"] += len(expired)
            if expired and self._waiting:
                self._cond.notify(len(expired))
            if len(heap) > 2 * len(pending) + 1024:  # drop stale entries
                self._heap = [(e[1], r) for r, e in pending.items() if e[1] is not None]
                heapq.heapify(self._heap)
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
            self._heap = []
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
            return RequestStats(requests=self._next_id - 1 - self._unsent,
                               pending=len(self._pending), **self._n)

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


# ----------------------------------------------------------------- server


class _Raised:
    """A handler's exception, carried as its outcome."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class _Refuse(Exception):
    """Handshake refused: send this status and reason, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Session:
    """One client: its two links and the replies waiting to be written.

    ``cond`` guards ``out``, ``inflight``, ``inflight_bytes``, ``eof`` and
    ``dead``; the reader, the writer and the workers wait/notify on it."""

    __slots__ = ("token", "peer", "reply", "request", "cond", "out", "inflight",
                 "inflight_bytes", "eof", "dead", "attached")

    def __init__(self, token: bytes, peer: str, reply: Connection) -> None:
        self.token = token
        self.peer = peer
        self.reply = reply
        self.request: Optional[Connection] = None
        self.cond = threading.Condition()
        self.out: list[tuple[int, _Buffer]] = []
        self.inflight = 0  # requests read, reply not yet written
        self.inflight_bytes = 0  # their request or reply bytes
        self.eof = False  # the client closed the request link (orderly)
        self.dead = False  # dropped or server closing
        self.attached = threading.Event()


class Server:
    """The server of a simplex pair: receives requests on the request link
    and answers on the reply link of the same client.

    Two listeners (``request_address``, ``reply_address``; port 0 picks a
    free port).  The message handler ``handler(payload) -> reply | None``
    is the same model as ``sk.serve``'s and ``aio.serve``'s: a plain
    function runs in ``workers`` threads (0: in each client's reader
    thread); an ``async def`` one runs on an event loop in a server thread,
    the requests of a batch concurrently.  None sends no reply (the
    client's request times out: use it for one-way messages).  A handler
    that raises (or returns something other than bytes-like or None, or a
    reply over ``max_frame``) is logged (logger ``"pysockkit"``, ERROR),
    kept in ``errors`` (the most recent 1,000) and answered with an error
    reply: the client raises :class:`RemoteError` (``sk.RemoteError``).
    ``handler=None`` or a non-callable is a TypeError.

    Per client a reader thread and a writer thread run; memory stays
    bounded: the reader stops reading (TCP pushes back on the client) while
    ``max_inflight`` requests or ``max_inflight_bytes`` are unanswered, and
    a client that does not read its replies for ``send_timeout`` seconds is
    dropped.  A misbehaving client (garbage, resets, a missing link, not
    reading) loses only its own session; the others are served on.  When a
    client closes its request link, its remaining replies are written and
    then its reply link is closed.

    Example::

        srv = simplex.Server(("127.0.0.1", 0), ("127.0.0.1", 0), lambda b: b[::-1])
        print(srv.request_address, srv.reply_address)
        ...
        srv.close()
    """

    def __init__(
        self,
        request_addr: AddressLike,
        reply_addr: AddressLike,
        handler: Handler,
        framing: Optional[Framing] = None,
        heartbeat: Optional[Heartbeat] = None,
        *,
        workers: int = 2,
        max_sessions: int = 64,
        max_inflight: int = 1024,
        max_inflight_bytes: int = 16 * 2**20,
        handshake_timeout: Optional[float] = 5.0,
        send_timeout: Optional[float] = 10.0,
    ) -> None:
        if handler is None:
            raise TypeError("simplex.Server: a handler is needed: handler(payload) -> "
                            "reply or None (simplex links carry only requests)")
        check_handlers("simplex.Server", handler, None, async_ok=True)
        request_addr = parse_address(request_addr, name="request_addr")
        reply_addr = parse_address(reply_addr, name="reply_addr")
        handshake_timeout = check_timeout(handshake_timeout, "handshake_timeout")
        send_timeout = check_timeout(send_timeout, "send_timeout")
        self._framing = _check_framing(framing)
        if workers < 0 or max_sessions < 1 or max_inflight < 1 or max_inflight_bytes < 1:
            raise ValueError("workers >= 0, max_sessions, max_inflight and "
                             "max_inflight_bytes >= 1")
        self._handler = handler
        self._book = ExitBook("simplex.Server")
        self._aloop: Optional[asyncio.AbstractEventLoop] = None
        self._athread: Optional[threading.Thread] = None
        self._hb = heartbeat
        self._workers = workers
        self._max_sessions = max_sessions
        self._max_inflight = max_inflight
        self._max_bytes = max_inflight_bytes
        self._handshake_timeout = handshake_timeout
        self._send_timeout = send_timeout
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Session] = {}
        self._links = 0  # accepted connections being served
        self._conns: set[Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._queue: deque[Optional[tuple[_Session, list[tuple[int, bytes]]]]] = deque()
        self._qcond = threading.Condition(self._lock)
        self._n = {"sessions_total": 0, "requests": 0, "replies": 0, "handler_errors": 0,
                   "unexpected": 0, "rejected": 0, "dropped": 0}
        self._request_l: Listener = listen(request_addr, framing=self._framing, heartbeat=heartbeat)
        try:
            self._reply_l: Listener = listen(reply_addr, framing=self._framing,
                                             heartbeat=heartbeat)
        except BaseException:
            self._request_l.close()
            raise
        if is_async(handler):
            self._start_loop()
        for i in range(workers if self._aloop is None else 0):
            self._spawn(self._work_loop, f"pysockkit-simplex-worker-{i}")
        self._spawn(self._accept_loop, "pysockkit-simplex-accept-req", self._request_l,
                    _ROLE_REQUEST)
        self._spawn(self._accept_loop, "pysockkit-simplex-accept-rep", self._reply_l,
                    _ROLE_REPLY)

    # ------------------------------------------------------------ public

    @property
    def request_address(self) -> Address:
        """(host, port) of the request link's listener (clients send here).

        Example::

            >>> srv.request_address
            ('127.0.0.1', 40123)
        """
        return self._request_l.address

    @property
    def reply_address(self) -> Address:
        """(host, port) of the reply link's listener (clients read from here).

        Example::

            >>> srv.reply_address
            ('127.0.0.1', 40124)
        """
        return self._reply_l.address

    @property
    def stats(self) -> ServerStats:
        """A :class:`ServerStats` snapshot.

        Example::

            print(srv.stats.sessions, srv.stats.requests, srv.stats.dropped)
        """
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.attached.is_set()]
            inflight = sum(s.inflight for s in self._sessions.values())
            return ServerStats(sessions=len(sessions), inflight=inflight, **self._n)

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions the handler raised (each answered with an error
        reply), oldest first; the most recent 1,000 are kept.

        Example::

            >>> [str(e) for e in srv.errors]
            ['bad input']
        """
        return self._book.errors

    def close(self, timeout: Optional[float] = 5.0) -> None:
        """Stop listening, close every client's links (their pending
        requests fail on the client side) and stop the threads, waiting up
        to ``timeout`` seconds for them.  Idempotent.

        Example::

            srv.close()
        """
        timeout = check_timeout(timeout)
        with self._lock:
            if self._closing:
                return
            self._closing = True
            sessions = list(self._sessions.values())
            conns = list(self._conns)
            self._queue.extendleft([None] * self._workers)  # stop workers first
            self._qcond.notify_all()
        self._request_l.close()
        self._reply_l.close()
        for s in sessions:
            with s.cond:
                s.dead = True
                s.cond.notify_all()
            s.attached.set()
        for c in conns:
            c.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.current_thread()
        for t in list(self._threads):
            if t is not me:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._stop_loop(deadline)

    def __enter__(self) -> "Server":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pysockkit.simplex.Server request={format_address(self.request_address)} "
                f"reply={format_address(self.reply_address)} sessions={len(self._sessions)}>")

    # ----------------------------------------------------------- threads

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._threads.discard(t)

        t = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    def _count(self, key: str, k: int = 1) -> None:
        with self._lock:
            self._n[key] += k

    def _accept_loop(self, listener: Listener, role: int) -> None:
        def take(conn: Connection) -> bool:
            with self._lock:
                if self._closing:
                    conn.close()
                    return False
                busy = self._links >= 2 * self._max_sessions
                if not busy:
                    self._links += 1
                    self._conns.add(conn)
            if busy:
                self._count("rejected")
                self._refuse(conn, _ST_BUSY, f"{self._max_sessions} sessions (max_sessions)")
                return True
            target = self._serve_reply_link if role == _ROLE_REPLY else self._serve_request_link
            self._spawn(self._serve_link, f"pysockkit-simplex-{_ROLE_NAME[role]}", target, conn)
            return True

        # close() closes the listener, which wakes the accept; an accept
        # error (EMFILE, ...) waits a little: do not spin
        accept_loop(listener, lambda: self._closing, take, lambda exc: time.sleep(0.05))

    def _serve_link(self, target: Callable[[Connection], None], conn: Connection) -> None:
        try:
            target(conn)
        except _Refuse as r:
            self._count("rejected")
            _log.warning("simplex: refused a link from %s: %s", self._peer(conn), r.reason)
            self._refuse(conn, r.status, r.reason)
        except Error as exc:  # the client broke the handshake or vanished
            if not self._closing:
                self._count("rejected")
                _log.warning("simplex: handshake with %s failed: %s", self._peer(conn), exc)
        finally:
            conn.close()
            with self._lock:
                self._links -= 1
                self._conns.discard(conn)

    @staticmethod
    def _peer(conn: Connection) -> str:
        try:
            return format_address(conn.remote_address)
        except OSError:
            return "a client"

    def _refuse(self, conn: Connection, status: int, reason: str) -> None:
        """Send a refusing acknowledgement, then close without an RST eating it."""
        try:
            conn.send(_ack(status, self._hb is not None, reason), timeout=1.0)
            conn.shutdown("write", timeout=1.0)
            conn.recv_many(16, timeout=0.2)  # take the hello: unread data means RST
        except Error:
            pass
        finally:
            conn.close()

    def _read_hello(self, conn: Connection, role: int) -> bytes:
        """The client's registration frame on a new link; returns its token."""
        try:
            frame: Any = conn.recv(timeout=self._handshake_timeout)
        except Timeout:
            raise _Refuse(_ST_BAD_HELLO, f"no registration within {self._handshake_timeout} s")
        if not isinstance(frame, bytes) or len(frame) != _HELLO.size or frame[:4] != _MAGIC:
            raise _Refuse(_ST_BAD_HELLO, "the first frame is not a simplex registration")
        _m, version, got_role, flags, _r, token = _HELLO.unpack(frame)
        if version != _VERSION:
            raise _Refuse(_ST_BAD_HELLO, f"version {version} not supported (1)")
        if got_role != role:
            other = self.reply_address if role == _ROLE_REQUEST else self.request_address
            raise _Refuse(
                _ST_WRONG_LINK,
                f"this is the {_ROLE_NAME[role]} link; the "
                f"{_ROLE_NAME.get(got_role, '?')} link is at {format_address(other)}",
            )
        if bool(flags & _FLAG_HEARTBEAT) != (self._hb is not None):
            raise _Refuse(_ST_HEARTBEAT, "the server uses heartbeats" if self._hb
                          else "the server does not use heartbeats")
        return bytes(token)

    def _serve_reply_link(self, conn: Connection) -> None:
        token = self._read_hello(conn, _ROLE_REPLY)
        sess = _Session(token, self._peer(conn), conn)
        with self._lock:
            if token in self._sessions:
                raise _Refuse(_ST_DUPLICATE, "a session with this token exists")
            self._sessions[token] = sess
        try:
            conn.send(_ack(_ST_OK, self._hb is not None), timeout=self._handshake_timeout)
            if self._hb is None:
                conn.shutdown("read")  # the client sent FIN after its hello
            if not sess.attached.wait(self._handshake_timeout) or sess.request is None:
                with self._lock:
                    self._n["rejected"] += 1
                _log.warning("simplex: %s registered a reply link but no request link "
                             "came within %s s", sess.peer, self._handshake_timeout)
                return
            if sess.dead:
                return
            with self._lock:
                self._n["sessions_total"] += 1
            self._write_loop(sess)
        finally:
            self._end(sess)

    def _serve_request_link(self, conn: Connection) -> None:
        token = self._read_hello(conn, _ROLE_REQUEST)
        with self._lock:
            sess = self._sessions.get(token)
            if sess is not None and sess.request is not None and not sess.dead:
                raise _Refuse(_ST_DUPLICATE, "this session already has its request link")
            if sess is None or sess.dead:
                raise _Refuse(_ST_UNKNOWN_SESSION,
                              "no reply link registered with this token: open the reply "
                              "link first")
            sess.request = conn
        try:
            conn.send(_ack(_ST_OK, self._hb is not None), timeout=self._handshake_timeout)
            if self._hb is None:
                conn.shutdown("write", timeout=self._handshake_timeout)  # request link is one-way
        except BaseException:
            self._end(sess)
            raise
        sess.attached.set()
        try:
            self._read_loop(sess, conn)
        finally:
            conn.close()

    def _end(self, sess: _Session) -> None:
        with sess.cond:
            sess.dead = True
            sess.cond.notify_all()
        with self._lock:
            if self._sessions.get(sess.token) is sess:
                del self._sessions[sess.token]
        sess.attached.set()
        if sess.request is not None:
            sess.request.close()
        sess.reply.close()

    def _drop(self, sess: _Session, why: str) -> None:
        if sess.dead or self._closing:
            return
        self._count("dropped")
        _log.warning("simplex: dropped the session of %s: %s", sess.peer, why)
        self._end(sess)

    def _read_loop(self, sess: _Session, conn: Connection) -> None:
        """The request link of one client: read batches, hand them out."""
        max_n, max_b, cond = self._max_inflight, self._max_bytes, sess.cond
        # bytes per request, as the last batch showed: a batch takes only
        # what fits under max_inflight_bytes (recv_many takes every frame the
        # kernel holds, megabytes once the window grew); one frame first
        size = max_b
        while True:
            with cond:
                while (sess.inflight >= max_n or sess.inflight_bytes >= max_b) and not sess.dead:
                    cond.wait(1.0)  # the writer notifies when replies went out
                if sess.dead:
                    return
                room = min(max_n - sess.inflight, 1024,
                           max(1, (max_b - sess.inflight_bytes) // size))
            try:
                # _core.pyi says list[bytes]: correlated frames come as (id, bytes)
                frames = conn.recv_many(room, timeout=1.0)
            except Timeout:
                continue
            except ConnectionReset as exc:
                self._drop(sess, f"request link reset ({exc})")
                return
            except ConnectionClosed as exc:
                if type(exc) is ConnectionClosed and not sess.dead:
                    with cond:  # orderly: answer what is in flight, then close
                        sess.eof = True
                        cond.notify_all()
                return
            except Error as exc:  # broken frames: the stream cannot resync
                self._drop(sess, f"request link broken ({exc})")
                return
            reqs: list[tuple[int, bytes]] = []
            nbytes = 0
            for fr in frames:
                if type(fr) is tuple and not fr[0] & REPLY:
                    reqs.append(fr)
                    nbytes += len(fr[1])
            bad = len(frames) - len(reqs)
            with self._lock:
                self._n["requests"] += len(reqs)
                if bad:
                    self._n["unexpected"] += bad
            if not reqs:
                continue
            size = max(1, nbytes // len(reqs))
            with cond:
                sess.inflight += len(reqs)
                sess.inflight_bytes += nbytes
            if self._aloop is not None:
                asyncio.run_coroutine_threadsafe(self._handle_async(sess, reqs), self._aloop)
                continue
            if self._workers == 0:
                self._handle(sess, reqs)
                continue
            with self._lock:
                step = 64
                for i in range(0, len(reqs), step):
                    self._queue.append((sess, reqs[i:i + step]))
                self._qcond.notify(min(self._workers, (len(reqs) + step - 1) // step))

    def _work_loop(self) -> None:
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
        max_frame = self._framing.max_frame
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
            self._count("handler_errors", errors)
        with sess.cond:
            sess.out.extend(out)
            sess.inflight -= skipped
            sess.inflight_bytes += delta
            sess.cond.notify_all()

    def _start_loop(self) -> None:
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

    def _stop_loop(self, deadline: Optional[float]) -> None:
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

    def _write_loop(self, sess: _Session) -> None:
        """The reply link of one client: write what the workers produced."""
        conn, cond = sess.reply, sess.cond
        while True:
            with cond:
                while not sess.out and not sess.dead and not (sess.eof and sess.inflight == 0):
                    cond.wait(1.0)
                if sess.dead:
                    return
                out, sess.out = sess.out, []
                if not out:  # eof and everything answered: orderly end
                    return
            try:
                # send_many takes (id, payload) tuples for correlated frames
                conn.send_many(cast("list[Any]", out), timeout=self._send_timeout)
            except Timeout:
                self._drop(sess, f"the client did not read its replies for "
                                 f"{self._send_timeout} s (send_timeout)")
                return
            except Error as exc:
                if not sess.eof:  # else the client closed both links: not misbehaviour
                    self._drop(sess, f"reply link failed ({exc})")
                return
            nbytes = sum(len(p) for _, p in out)
            with cond:
                sess.inflight -= len(out)
                sess.inflight_bytes -= nbytes
                cond.notify_all()
            self._count("replies", len(out))
