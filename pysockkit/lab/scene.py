"""A socket held in a TCP state (:class:`Scene`), what it must release, and
the helpers that observe a socket's state and wait for it."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, TypeVar

from .._enums import TcpState
from .._display import html_table as _html
from .._errors import Timeout
from .._net import format_address
from .._observe import SocketEntry, fd_state, find_socket, tcp_info
from .recipes import ObservedBy

# --------------------------------------------------------------------------
# Scene


class _Resources:
    """What a scene must release on exit: sockets (aborted or closed, in
    order) and, for on_fd, the helper process and its channel."""

    def __init__(self) -> None:
        self.socks: list[tuple[socket.socket, bool]] = []  # (sock, abort)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.channel: Optional[socket.socket] = None
        self.closed = False

    def add(self, sock: socket.socket, abort: bool = True) -> socket.socket:
        self.socks.append((sock, abort))
        return sock

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # first the sockets, in the order they were added (the socket in
        # the state first, so its RST reaches a peer that is still open)
        for sock, abort in self.socks:
            if abort and sock.fileno() >= 0:
                _abort(sock)
            sock.close()
        self.socks.clear()
        if self.channel is not None:
            self.channel.close()  # the helper sees EOF and exits
            self.channel = None
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.communicate(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _abort(sock: socket.socket) -> None:
    """SO_LINGER {1, 0}: close() will send RST and leave nothing behind."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


@dataclass(frozen=True, eq=False)
class Scene:
    """A socket held in a TCP state; a context manager.

    Returned by :func:`reproduce`, already in the state.  Closing it (or
    leaving the ``with`` block) closes every socket involved, aborting
    them so that no orphan lingers; ``close()`` is idempotent.

    - ``state``: the state asked for; ``observed``: the state the kernel
      reported (``SYN_RCVD`` when ``NEW_SYN_RECV`` was asked for).
    - ``how``: the recipe in one line; ``note``: what to know about it.
    - ``observed_by``: ``"TCP_INFO"`` or ``"sock_diag"``.
    - ``elapsed_s``: seconds from the triggering syscall until the kernel
      reported the state.
    - ``sock``: the socket in the state (``None`` for TIME_WAIT and
      request sockets, which have no descriptor); ``peer``: the other
      end, if still open; ``listener``: the listening socket, if the
      recipe keeps one; ``others``: any further sockets the recipe needs
      (the connection that fills SYN_SENT's accept queue).
    - ``entry``: the :class:`pysockkit.SocketEntry` sock_diag reports for
      the socket in the state (``None`` for CLOSED, which diag does not
      list).  For ``on_fd`` it was read inside the helper's namespace.
    - ``address``: ``(host, port)`` of the socket in the state;
      ``four_tuple``: ``(local_host, local_port, remote_host,
      remote_port)`` seen from it (remote ``("0.0.0.0", 0)`` / ``("::",
      0)`` for LISTEN).
    - ``family``: ``AF_INET`` or ``AF_INET6``; ``netns_pid``: for
      ``on_fd``, the pid of the helper whose network namespace holds the
      socket (``nsenter -t PID -U -n --preserve-credentials ss -tan``
      shows it), else ``None``.

    The scene's open sockets have ``settimeout(timeout)`` (the *timeout*
    given to :func:`reproduce`), so reading from one cannot hang.

    Example::

        >>> import pysockkit as sk
        >>> with sk.lab.reproduce("FIN_WAIT_1", family="ipv6") as scene:
        ...     scene.observed.name, scene.current().name, scene.address[0]
        ('FIN_WAIT_1', 'FIN_WAIT_1', '::1')
        >>> scene.closed
        True
    """

    state: TcpState
    observed: TcpState
    how: str
    observed_by: ObservedBy
    elapsed_s: float
    family: socket.AddressFamily
    address: tuple[str, int]
    four_tuple: tuple[str, int, str, int]
    sock: Optional[socket.socket] = None
    peer: Optional[socket.socket] = None
    listener: Optional[socket.socket] = None
    others: tuple[socket.socket, ...] = ()
    entry: Optional[SocketEntry] = None
    note: str = ""
    netns_pid: Optional[int] = None
    _res: _Resources = field(default_factory=_Resources, repr=False)

    @property
    def reached(self) -> bool:
        """True if the kernel reported the state asked for (NEW_SYN_RECV
        counts as reached when a request socket was seen as SYN_RCVD).

        Example::

            >>> with reproduce(TcpState.NEW_SYN_RECV) as s:
            ...     s.reached, s.observed.name, s.entry.is_request
            (True, 'SYN_RCVD', True)
        """
        if self.observed is self.state:
            return True
        return (self.state is TcpState.NEW_SYN_RECV
                and self.observed is TcpState.SYN_RCVD
                and self.entry is not None and self.entry.is_request)

    @property
    def closed(self) -> bool:
        """True once the scene has been closed.

        Example::

            >>> s = reproduce(TcpState.LISTEN); s.closed
            False
            >>> s.close(); s.closed
            True
        """
        return self._res.closed

    def current(self) -> Optional[TcpState]:
        """Observe again, the same way as the first time: the state now,
        or ``None`` if the socket is gone (diag no longer lists it).

        Example::

            >>> with reproduce(TcpState.CLOSING) as s:
            ...     s.current() is TcpState.CLOSING
            True
        """
        if self.closed:
            raise ValueError("the scene is closed")
        if self.observed_by == "TCP_INFO":
            assert self.sock is not None
            return _fd_state(self.sock)
        e = _lookup(self.four_tuple)
        return None if e is None else e.state

    def close(self) -> None:
        """Close (abort) every socket of the scene.  Idempotent.

        Example::

            >>> s = reproduce(TcpState.ESTABLISHED)
            >>> s.close(); s.sock.fileno()
            -1
        """
        self._res.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repr_html_(self) -> str:
        lh, lp, rh, rp = self.four_tuple
        rows = [("state", f"{self.state.name} (observed {self.observed.name} by "
                          f"{self.observed_by} in {self.elapsed_s * 1e3:.3f} ms)"),
                ("how", self.how), ("note", self.note),
                ("4-tuple", f"{format_address((lh, lp))} -> {format_address((rh, rp))}"),
                ("diag", "-" if self.entry is None else str(self.entry)),
                ("held", "no (closed)" if self.closed else "yes")]
        return _html(("", ""), rows)

    def __repr__(self) -> str:
        lh, lp, rh, rp = self.four_tuple
        return (f"<Scene {self.state.name}: observed {self.observed.name} by "
                f"{self.observed_by} in {self.elapsed_s * 1e3:.3f} ms, "
                f"{format_address((lh, lp))} -> {format_address((rh, rp))}"
                f"{', closed' if self.closed else ''}>")


# --------------------------------------------------------------------------
# Observation helpers

_T = TypeVar("_T")


def _fd_state(sock: socket.socket) -> TcpState:
    return fd_state(sock.fileno())


def _lookup(t: tuple[str, int, str, int]) -> Optional[SocketEntry]:
    # find_socket compares the returned id with the one asked for: the
    # kernel answers an exact lookup of a vanished 4-tuple with the
    # listener on that port.
    return find_socket((t[0], t[1]), (t[2], t[3]))


def _wait(probe: Callable[[], _T], ok: Callable[[_T], bool], t0: float,
          timeout: float, what: str, show: Callable[[_T], str]) -> tuple[_T, float]:
    """Poll *probe* until ``ok(value)``; returns (value, seconds since t0).

    Spins for the first 2 ms (most states are there within 0.3 ms, and we
    want to measure that), then sleeps briefly between polls.  Raises
    Timeout, naming the last value seen, once *timeout* has passed.
    """
    while True:
        value = probe()
        now = time.perf_counter()
        if ok(value):
            return value, now - t0
        if now - t0 >= timeout:
            raise Timeout(f"lab: {what} not reached within {timeout:g} s "
                          f"(last seen: {show(value)})")
        if now - t0 > 0.002:
            time.sleep(0.0005)


def _wait_fd(sock: socket.socket, want: TcpState, t0: float, timeout: float,
             what: str) -> float:
    _, dt = _wait(lambda: _fd_state(sock), lambda s: s is want, t0, timeout,
                  f"{what} (TCP_INFO state {int(want)})",
                  lambda s: f"{s.name} by TCP_INFO")
    return dt


def _wait_diag(t: tuple[str, int, str, int], want: TcpState, t0: float,
               timeout: float, what: str) -> tuple[SocketEntry, float]:
    e, dt = _wait(lambda: _lookup(t), lambda e: e is not None and e.state is want,
                  t0, timeout, f"{what} (sock_diag state {int(want)})",
                  lambda e: "nothing" if e is None else f"{e.state.name} by sock_diag")
    assert e is not None
    return e, dt


def _entry_for(sock: socket.socket, t: tuple[str, int, str, int]) -> Optional[SocketEntry]:
    """The diag entry of a socket we hold (None for CLOSED, not in diag)."""
    e = _lookup(t)
    if e is not None and e.inode != os.fstat(sock.fileno()).st_ino:
        return None  # someone else's socket on a reused tuple
    return e


# --------------------------------------------------------------------------
# Socket helpers


def _any(fam: socket.AddressFamily) -> str:
    return "::" if fam == socket.AF_INET6 else "0.0.0.0"


def _name(sock: socket.socket) -> tuple[str, int]:
    a = sock.getsockname()
    return (str(a[0]), int(a[1]))


def _peername(sock: socket.socket) -> tuple[str, int]:
    a = sock.getpeername()
    return (str(a[0]), int(a[1]))


def _tuple(sock: socket.socket) -> tuple[str, int, str, int]:
    return (*_name(sock), *_peername(sock))


def _fill(sock: socket.socket, deadline: float) -> None:
    """Write non-blocking until the peer's (small, never read) window is
    full and data is left unsent in our send queue: a FIN queued now will
    wait behind it for good."""
    sock.setblocking(False)
    chunk = bytes(65536)
    while True:
        try:
            while True:
                sock.send(chunk)
        except BlockingIOError:
            pass
        notsent = tcp_info(sock).notsent_bytes
        if notsent is None:  # kernel < 4.6: EAGAIN with a tiny peer buffer must do
            return
        if notsent > 0:
            return
        if time.perf_counter() >= deadline:
            raise Timeout("lab: could not fill the peer's receive window")
        select.select([], [sock], [], 0.005)


def _settle(res: _Resources, timeout: float) -> None:
    """Give every open socket of a scene the same, predictable mode: a
    timeout (so a recv() on a scene's socket in a notebook cannot hang)."""
    for sock, _ in res.socks:
        if sock.fileno() >= 0:
            sock.settimeout(timeout)
