"""The synchronous reconnecting connection: ``sk.connect(..., reconnect=)``.

A :class:`ReconnectingConnection` holds the current :class:`sk.Connection`
and one supervisor thread.  The thread waits (``poll``, without the GIL) for
the connection's socket to report FIN, RST or a shutdown (the heartbeat
reactor shuts a dead peer's socket down), then reconnects with the
:class:`sk.Reconnect` backoff, and waits again.  A user call uses the
current connection; while there is none it waits for the next one within
its own timeout.  A call in flight when the connection is lost fails (see
:func:`_reconnect.lost_error`) and is never retried.  Policy, events and the
event log are in ``_reconnect.py`` (shared with asyncio).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Optional, Union

from . import _conn as _conn_module
from ._conn import _START_LOCK, Connection
from ._duplex import Duplex
from ._errors import ConnectionClosed, ConnectionReset, Error, PeerDead, Timeout
from ._net import Address, AddressLike, check_timeout, format_address, resolve
from ._reconnect import (
    ConnectionEvent,
    EventReader,
    Lifecycle,
    Reconnect,
    is_loss,
    loss_reason,
    lost_error,
)
from ._types import Framing, Heartbeat, Keepalive, Message
from ._typevars import M

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ._enums import TcpState
    from ._observe import TcpInfo

__all__ = ["ReconnectingConnection"]

_Buffer = Union[bytes, bytearray, memoryview]
_KEEP_OLD = 8  # lost connections with unread frames kept for recv, at most
_HUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class _Stopped(Exception):
    """close() was called while the supervisor waited."""


def _unread(conn: Connection[Any]) -> int:
    """Bytes received on ``conn`` and not yet read by the application."""
    n = conn.buffered
    try:
        buf = fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0")
        n += int.from_bytes(buf, "little")
    except (OSError, ValueError):
        pass
    return n


class _Duplex(Duplex):
    """The receive worker of one connection of a reconnecting connection:
    requests pending at the loss fail with the error of a call in flight
    (``maybe_delivered``), never retried."""

    def __init__(self, conn: "Connection[Any]", on_message: Optional[Callable[[Message], None]],
                 maxsize: int, where: str) -> None:
        self._where = where
        super().__init__(conn, on_message, maxsize)

    def _fail_all(self, exc: BaseException) -> None:
        if is_loss(exc):
            exc = lost_error(exc, "request_async", self._where, True)
        super()._fail_all(exc)


class ReconnectingConnection(Lifecycle, Generic[M]):
    """A long connection that reconnects by itself, made by
    ``sk.connect(addr, reconnect=sk.Reconnect(...))``.

    It has the methods of :class:`sk.Connection` (``send``, ``send_many``,
    ``flush``, ``recv``, ``recv_many``, ``request``, ``close``, ``abort``,
    the addresses, ``info()``, ``latency`` ...), each on the current
    connection.  When the connection is lost (FIN, RST, ``sk.PeerDead``, a
    kernel timeout) a supervisor thread reconnects with the backoff of the
    :class:`sk.Reconnect` policy, reapplying framing, heartbeat and
    keepalive.  Meanwhile:

    * a call in flight at the loss raises its own typed error
      (``sk.ConnectionClosed``, ``sk.ConnectionReset``, ``sk.PeerDead``)
      whose ``maybe_delivered`` says whether what it sent may have reached
      the peer; it is never retried;
    * a call started while the connection is down waits for the next one
      within its own ``timeout``, then raises ``sk.Timeout`` saying that
      the connection was down (nothing was sent); Ctrl-C interrupts it;
    * frames that arrived before the loss are still returned by ``recv``
      first;
    * after ``Reconnect.attempts`` failed attempts it gives up: calls raise
      ``sk.ConnectionClosed``.

    ``reconnects`` counts the reconnections, ``events()`` iterates over the
    lifecycle events (:class:`sk.ConnectionEvent`), ``on_event=`` gets each
    event as it happens (in the supervisor thread).  ``close()`` stops at
    once.

    Example::

        conn = sk.connect(addr, timeout=10, heartbeat=sk.Heartbeat(1, 3),
                          reconnect=sk.Reconnect(initial=0.1, maximum=5.0))
        conn.request(b"x", timeout=2)      # works across a server restart
        for ev in conn.events(wait=False):
            print(ev)
        conn.close()
    """

    def __init__(
        self,
        addr: AddressLike,
        policy: Reconnect,
        framing: "Framing[M]",
        heartbeat: Optional[Heartbeat],
        keepalive: Optional[Keepalive],
        on_event: Optional[Callable[[ConnectionEvent], Any]] = None,
    ) -> None:
        """Internal: use ``sk.connect(addr, reconnect=...)``."""
        super().__init__(addr, policy, on_event)
        self._framing = framing
        self._hb = heartbeat
        self._keepalive = keepalive
        self._cond = threading.Condition()
        self._conn: Optional[Connection[M]] = None
        self._old: list[Connection[M]] = []  # lost, with frames not yet read
        self._kicked = False
        self._write_behind = False  # sk.connect(write_behind=), for every connection
        self._loss_exc: Optional[BaseException] = None  # what a call saw
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread: Optional[threading.Thread] = None
        # start_receiver(): (on_message, maxsize), applied to every connection
        self._receiver: Optional[tuple[Optional[Callable[[Message], None]], int]] = None

    # ------------------------------------------------------------ dialing

    def _dial_one(self, deadline: Optional[float]) -> Connection[M]:
        """One attempt (every resolved address), interruptible by close()."""
        last: Optional[BaseException] = None
        for fam, host, port in resolve(self._addr):
            sock = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
            try:
                rc = sock.connect_ex((host, port))
                if rc == errno.EINPROGRESS:
                    self._wait_fd(sock.fileno(), select.POLLOUT, deadline)
                    rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc != 0:
                    hint = "; is the server up?" if rc == errno.ECONNREFUSED else ""
                    raise Error(rc, f"connect to {format_address((host, port))}: "
                                f"{os.strerror(rc)}{hint}")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                fd = sock.detach()
            except (Error, Timeout) as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            conn: Connection[M] = Connection(fd, self._framing, self._hb, self._keepalive)
            conn.write_behind = self._write_behind
            return conn
        assert last is not None
        raise last

    def _wait_fd(self, fd: int, events: int, deadline: Optional[float]) -> None:
        """Wait for ``events`` on ``fd`` until ``deadline``; raises
        :class:`_Stopped` when close() was called, ``sk.Timeout`` at the
        deadline."""
        p = select.poll()
        p.register(fd, events)
        p.register(self._wake, select.POLLIN)
        while True:
            if self._state == "closed":
                raise _Stopped()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Timeout(f"connect to {self._where}: no answer within "
                              f"{self._policy.connect_timeout} s")
            ready = p.poll(None if left is None else max(1, int(left * 1000) + 1))
            for rfd, _ev in ready:
                if rfd == fd:
                    return
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except (BlockingIOError, OSError):
            pass

    def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or until close()."""
        deadline = time.monotonic() + delay
        p = select.poll()
        p.register(self._wake, select.POLLIN)
        while self._state != "closed":
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if p.poll(max(1, int(left * 1000) + 1)):
                self._drain_wake()
        raise _Stopped()

    def _connect_loop(self, deadline: Optional[float]) -> Connection[M]:
        """Attempts with backoff until one succeeds; raises the last error
        when the attempts are spent or at ``deadline``."""
        backoff = self._schedule()
        last: Optional[BaseException] = self._last_loss
        delay = 0.0
        while True:
            if self._state == "closed":
                raise _Stopped()
            delay = backoff.plan(deadline, last, self._where)
            if delay:
                self._log.emit("retrying", attempt=backoff.attempt + 1, delay=delay,
                               exception=last)
                self._sleep(delay)
            backoff.attempt += 1
            limit = time.monotonic() + self._policy.connect_timeout
            if deadline is not None:
                limit = min(limit, deadline)
            try:
                conn = self._dial_one(limit)
                with self._cond:
                    self._up_since = time.monotonic()
                return conn
            except (Error, Timeout) as exc:
                last = exc
                if deadline is not None and time.monotonic() >= deadline:
                    raise backoff.timeout(self._where, exc) from exc

    def _start(self, timeout: Optional[float]) -> None:
        """The first connect, in the caller's thread, then the supervisor."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            conn = self._connect_loop(deadline)
        except BaseException as exc:
            self._state = "closed"
            os.close(self._wake)
            self._wake = -1
            if isinstance(exc, _Stopped):
                raise ConnectionClosed("closed while connecting") from None
            raise
        self._up(conn)
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name=f"pysockkit-reconnect {self._where}")
        self._thread.start()

    def _up(self, conn: Connection[M]) -> None:
        if self._receiver is not None:
            self._duplex_of(conn)
        with self._cond:
            if self._state == "closed":
                conn.close()
                raise _Stopped()
            self._mark_up()
            self._conn = conn
            self._kicked = False
            self._cond.notify_all()
        self._emit_connected(conn)

    # --------------------------------------------------------- supervisor

    def _supervise(self) -> None:
        try:
            while True:
                conn = self._conn
                assert conn is not None
                exc = self._watch(conn)
                self._down(conn, exc)
                try:
                    new = self._connect_loop(None)
                except (Error, Timeout) as final:
                    self._give_up(final)
                    return
                self._up(new)
        except _Stopped:
            pass
        finally:
            with self._cond:
                closing = self._state == "closed"
                if closing and self._wake >= 0:
                    os.close(self._wake)
                    self._wake = -1

    def _watch(self, conn: Connection[M]) -> Optional[BaseException]:
        """Wait until ``conn`` is lost (FIN, RST, shutdown by the heartbeat
        reactor, or a call saw a loss); its error, if known."""
        p = select.poll()
        p.register(conn.fileno(), select.POLLRDHUP)
        p.register(self._wake, select.POLLIN)
        while True:
            if self._state == "closed":
                raise _Stopped()
            with self._cond:
                if self._kicked:
                    return None
            for fd, _ev in p.poll():
                if fd == self._wake:
                    self._drain_wake()
                elif _ev & _HUP:
                    if self._hb is not None and conn.heartbeat_stats.get("peer_dead"):
                        return PeerDead(f"the peer sent nothing for {self._hb.timeout} s "
                                        "(heartbeat timeout)")
                    if _ev & select.POLLERR:
                        return ConnectionReset("the peer reset the connection (RST)")
                    return ConnectionClosed("the peer closed the connection (FIN)")

    def _down(self, conn: Connection[M], exc: Optional[BaseException]) -> None:
        """``conn`` is lost: keep it for its unread frames, log ``lost``."""
        with self._cond:
            if self._state == "closed":
                raise _Stopped()
            if self._state != "up" or self._conn is not conn:
                return
            if exc is None:
                exc = self._loss_exc
            self._loss_exc = None
            if exc is None:
                exc = ConnectionClosed("the peer closed the connection (FIN or RST)")
            self._mark_down(exc)
            self._conn = None
            if conn._duplex is not None:
                self._next_id = max(self._next_id, conn._request_stats()["next_id"])
            keep = _unread(conn) > 0
            if keep:
                self._old.append(conn)
                while len(self._old) > _KEEP_OLD:
                    self._old.pop(0).close()
        if not keep:
            conn.close()
        self._log.emit("lost", reason=loss_reason(exc), exception=exc)

    def _give_up(self, final: BaseException) -> None:
        with self._cond:
            if self._state == "closed":
                return
            self._mark_gave_up(final)
            self._cond.notify_all()
        self._log.emit("gave_up", attempts=self.attempts, exception=final)

    def _lost_in_call(self, conn: Connection[M], exc: BaseException) -> None:
        """A call on ``conn`` saw a loss: tell the supervisor."""
        with self._cond:
            if self._conn is not conn or self._state != "up":
                return
            self._kicked = True
            self._loss_exc = exc
        if self._wake >= 0:
            try:
                os.eventfd_write(self._wake, 1)
            except OSError:
                pass

    # -------------------------------------------------------------- calls

    def _current(self, op: str, deadline: Optional[float],
                 timeout: Optional[float]) -> Connection[M]:
        """The connection to use, waiting while it is down."""
        with self._cond:
            while True:
                up, left = self._wait_left(op, deadline, timeout)
                if up:
                    assert self._conn is not None
                    return self._conn
                self._cond.wait(left)

    def _call(self, op: str, timeout: Optional[float], sends: bool,
              fn: Callable[[Connection[M], Optional[float]], Any]) -> Any:
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._current(op, deadline, timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return fn(conn, left)
        except Error as exc:
            if not is_loss(exc):
                raise
            if self._state == "closed":
                raise self._closed_in_call(op, exc)
            self._lost_in_call(conn, exc)
            raise lost_error(exc, op, self._where, True if sends else None) from exc

    def send(self, data: _Buffer, timeout: Optional[float] = None,
             id: Optional[int] = None) -> None:
        """``sk.Connection.send`` on the current connection (waits while
        reconnecting)."""
        self._call("send", timeout, True, lambda c, t: c.send(data, t, id))

    def send_many(self, frames: Iterable[Union[_Buffer, tuple[int, _Buffer]]],
                  timeout: Optional[float] = None) -> int:
        """``sk.Connection.send_many`` on the current connection."""
        frames = list(frames)
        n: int = self._call("send_many", timeout, True, lambda c, t: c.send_many(frames, t))
        return n

    def flush(self, timeout: Optional[float] = None) -> None:
        """``sk.Connection.flush`` on the current connection."""
        self._call("flush", timeout, True, lambda c, t: c.flush(t))

    def request(self, data: _Buffer, timeout: Optional[float] = None) -> bytes:
        """``sk.Connection.request`` on the current connection: waits while
        reconnecting; a request in flight at a loss raises with
        ``maybe_delivered=True`` and is not retried.

        Example::

            reply = conn.request(b"x", timeout=2.0)
        """
        reply: bytes = self._call("request", timeout, True, lambda c, t: c.request(data, t))
        return reply

    def _duplex_of(self, conn: Connection[M]) -> Duplex:
        """``conn``'s receive worker, started (ids continued) if needed."""
        with _START_LOCK:
            d = conn._duplex
            if d is None:
                on_message, maxsize = self._receiver or (None, 10_000)
                d = _Duplex(conn, on_message, maxsize, self._where)
                conn._duplex = d
                conn._skip_ids(self._next_id)
            return d

    def start_receiver(self, on_message: Optional[Callable[[Message], None]] = None,
                       maxsize: int = 10_000) -> None:
        """Run a receive worker (the threaded duplex, see
        ``sk.Connection.start_receiver``) on this and every later
        connection, each calling ``on_message``.  Without ``on_message``,
        frames wait in each connection's own queue (``conn.duplex.get()``
        reads the current one's).

        Example::

            conn.start_receiver(on_message=print)
        """
        with self._cond:
            if self._receiver is not None:
                raise RuntimeError("the receive worker already runs (start_receiver() was "
                                   "called)")
            self._receiver = (on_message, maxsize)
            conn = self._conn
        if conn is not None:
            self._duplex_of(conn)

    @property
    def duplex(self) -> Optional[Duplex]:
        """The current connection's :class:`Duplex` (None while down or
        before the first ``start_receiver``/``request_async``)."""
        conn = self._conn
        return None if conn is None else conn._duplex

    def request_async(self, data: _Buffer,
                      timeout: Optional[float] = None) -> "Future[bytes]":
        """``sk.Connection.request_async`` on the current connection
        (waiting for one within ``timeout`` while reconnecting).  Requests
        pending when the connection is lost fail with its error
        (``maybe_delivered=True``), never retried; correlation ids go on
        increasing on the new connection, never reused.

        Example::

            fut = conn.request_async(b"x", timeout=2.0)
            print(fut.result())
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._current("request_async", deadline, timeout)
        d = self._duplex_of(conn)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return d.request_async(data, left)
        except Error as exc:
            if not is_loss(exc):
                raise
            self._lost_in_call(conn, exc)
            raise lost_error(exc, "request_async", self._where, True) from exc

    def _take_old(self) -> Optional[M]:
        """A frame received on a lost connection, if any is left."""
        while True:
            with self._cond:
                if not self._old:
                    return None
                old = self._old[0]
            try:
                msg: M = old.recv(0)
                return msg
            except Exception:  # drained (its loss error) or nothing complete left
                with self._cond:
                    if self._old and self._old[0] is old:
                        self._old.pop(0)
                old.close()

    def recv(self, timeout: Optional[float] = None) -> M:
        """The next frame: first those received before a loss, then from
        the current connection (waits while reconnecting).

        Example::

            msg = conn.recv(timeout=1.0)
        """
        msg = self._take_old()
        if msg is not None:
            return msg
        got: M = self._call("recv", timeout, False, lambda c, t: c.recv(t))
        return got

    def recv_many(self, max_frames: Optional[int] = 4096,
                  timeout: Optional[float] = None) -> list[M]:
        """``sk.Connection.recv_many``; frames of a lost connection first."""
        msg = self._take_old()
        if msg is not None:
            return [msg]
        got: list[M] = self._call("recv_many", timeout, False,
                                  lambda c, t: c.recv_many(max_frames, t))
        return got

    def __iter__(self) -> Iterator[M]:
        """Frames until close() (across reconnections).

        Example::

            for msg in conn:
                print(msg)
        """
        while True:
            try:
                yield self.recv()
            except ConnectionClosed:
                if self._state in ("closed", "gave_up"):
                    return

    # ----------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connection and stop reconnecting at once.  Calls
        waiting for a connection raise ``sk.ConnectionClosed``.  Idempotent.

        Example::

            conn.close()
        """
        self._stop(abort=False)

    def abort(self) -> None:
        """Abort (RST) the connection and stop reconnecting at once.

        Example::

            conn.abort()
        """
        self._stop(abort=True)

    def _stop(self, abort: bool) -> None:
        with self._cond:
            if self._state == "closed":
                return
            self._state = "closed"
            conns = self._old + ([self._conn] if self._conn is not None else [])
            self._old = []
            self._cond.notify_all()
            thread = self._thread
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)
        for c in conns:
            c.abort() if abort else c.close()
        self._log.emit("closed")
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        with self._cond:
            if (thread is None or not thread.is_alive()) and self._wake >= 0:
                os.close(self._wake)
                self._wake = -1

    def events(self, wait: bool = True, timeout: Optional[float] = None) -> EventReader:
        """Iterate over the lifecycle events (:class:`sk.ConnectionEvent`),
        from the oldest kept (the log keeps the last 1,000; ``dropped``
        counts those a reader missed).  ``wait=True`` waits for more and
        ends after ``closed`` (or ``timeout`` seconds without an event);
        ``wait=False`` ends when caught up.

        Example::

            for ev in conn.events(wait=False):
                print(ev.kind, ev.time, dict(ev.details))
        """
        return self._log.reader(wait, timeout)

    def wait_connected(self, timeout: Optional[float] = None) -> None:
        """Wait until a connection is up (raises like a call would).

        Example::

            conn.wait_connected(timeout=5.0)
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._current("wait_connected", deadline, timeout)

    # --------------------------------------------------------- passthrough

    def _now(self) -> Connection[M]:
        conn = self._conn
        if conn is None:
            raise ConnectionClosed(f"the connection to {self._where} is down "
                                   f"({self._state}); it reconnects by itself")
        return conn

    @property
    def framing(self) -> "Framing[M]":
        """The :class:`sk.Framing` of every connection made."""
        return self._framing

    @property
    def heartbeat(self) -> Optional[Heartbeat]:
        """The :class:`sk.Heartbeat` of every connection made, or None."""
        return self._hb

    @property
    def local_address(self) -> Address:
        """(host, port) of this end of the current connection."""
        return self._now().local_address

    @property
    def remote_address(self) -> Address:
        """(host, port) of the peer of the current connection."""
        return self._now().remote_address

    @property
    def latency(self) -> Optional[float]:
        """The current connection's last heartbeat round trip, or None."""
        conn = self._conn
        return None if conn is None else conn.latency

    @property
    def heartbeat_stats(self) -> dict[str, Any]:
        """The current connection's heartbeat counters."""
        return self._now().heartbeat_stats

    def fileno(self) -> int:
        """The current connection's descriptor (-1 while down)."""
        conn = self._conn
        return -1 if conn is None else conn.fileno()

    def info(self) -> "TcpInfo":
        """TCP_INFO of the current connection."""
        return self._now().info()

    @property
    def state(self) -> "TcpState":
        """The TCP state of the current connection (CLOSED while down)."""
        from ._enums import TcpState

        conn = self._conn
        return TcpState.CLOSED if conn is None else conn.state

    @property
    def pending_replies(self) -> int:
        """``sk.Connection.pending_replies`` of the current connection."""
        conn = self._conn
        return 0 if conn is None else conn.pending_replies

    def __enter__(self) -> "ReconnectingConnection[M]":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pysockkit.ReconnectingConnection {self._where} {self._state} "
                f"reconnects={self.reconnects}>")


def connect_reconnecting(
    addr: AddressLike,
    timeout: Optional[float],
    framing: "Framing[Any]",
    heartbeat: Optional[Heartbeat],
    keepalive: Optional[Keepalive],
    policy: Reconnect,
    on_event: Optional[Callable[[ConnectionEvent], Any]],
    write_behind: bool = False,
) -> "ReconnectingConnection[Any]":
    """``sk.connect(..., reconnect=policy)``: the first connect retries
    with the policy's backoff within ``timeout``."""
    timeout = check_timeout(timeout)
    conn: ReconnectingConnection[Any] = ReconnectingConnection(
        addr, policy, framing, heartbeat, keepalive, on_event)
    conn._write_behind = write_behind
    conn._start(timeout)
    return conn


_conn_module._reconnecting = connect_reconnecting
