"""The state lab: hold a real socket in any TCP state, on loopback, unprivileged.

``reproduce(state)`` builds the state with plain socket calls on 127.0.0.1
(or ::1), waits until the kernel reports it, and keeps it there until the
``with`` block ends.  No root, no firewall rule: each recipe uses only
what any user may do, and the kernel's own rules do the rest (a full accept queue drops a SYN; TCP_DEFER_ACCEPT drops a bare ACK; a
FIN cannot be sent while unsent data sits behind a zero window; a
half-closed connection stays half-closed).  ``docs/states.md`` explains
each recipe, the measured timings and the traps.

How each state is seen:

- ``"TCP_INFO"`` -- ``getsockopt(TCP_INFO)`` on the socket in the state.
  Used whenever there is a file descriptor to ask.
- ``"sock_diag"`` -- the kernel's socket table (NETLINK_SOCK_DIAG, exact
  lookup by 4-tuple, listener fallback detected).  Used for what has no
  descriptor: TIME_WAIT (a timewait sock) and SYN_RCVD request sockets.

Linux keeps a half-open connection as a *request socket* (state
``NEW_SYN_RECV`` = 12) until it is complete; sock_diag and ``ss`` report
it as ``SYN_RCVD`` (3) with inode 0.  ``reproduce(TcpState.NEW_SYN_RECV)``
therefore observes ``SYN_RCVD`` and says so in ``scene.note``.  A full
socket in SYN_RCVD, with a descriptor, comes only from a simultaneous open
whose SYN-ACK is lost; dropping it needs a socket filter and so
CAP_NET_ADMIN, which ``unshare -Urn`` grants in a private network
namespace: ``reproduce(TcpState.SYN_RCVD, on_fd=True)`` runs a helper
there and receives the socket's descriptor back over a Unix socket.

What lingers after the block: every socket the lab opened is closed, and
aborted (RST) where a FIN would leave an orphan behind.  A TIME_WAIT scene
leaves its timewait sock for 60 s (the kernel's fixed 2*MSL; nothing an
unprivileged process can shorten), which is the point of it.

Conversations: ``conversation(name)`` plays a whole scenario -- the
handshake, the four-way close, a lost final ACK, a keepalive probe, ...
(``conversations()`` lists them) -- in a private network namespace and
returns its :class:`pysockkit.Recording`: every segment, captured, beside
both ends' states (``docs/packets.md``).

Example::

    >>> import pysockkit as sk
    >>> with sk.lab.reproduce(sk.TcpState.CLOSE_WAIT) as scene:
    ...     print(scene.observed.name, scene.observed_by)
    ...     print(sk.tcp_info(scene.sock).state.name)
    CLOSE_WAIT TCP_INFO
    CLOSE_WAIT
    >>> print(sk.lab.states())  # doctest: +SKIP
    state         observed      by         needs          how
    LISTEN        LISTEN        TCP_INFO   -              bind() + listen()
    ...
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypeVar

from ._enums import StateLike, TcpState, as_state
from ._display import html_table as _html
from ._display import text_table as _table
from ._errors import Error, Timeout
from ._net import FamilyLike, check_timeout, format_address, loopback_host, parse_family
from ._observe import SocketEntry, fd_state, find_socket, tcp_info

__all__ = [
    "ALL_STATES",
    "ConversationTable",
    "LabUnavailable",
    "Outcome",
    "Recipe",
    "RecipeTable",
    "Scene",
    "Survey",
    "conversation",
    "conversations",
    "reproduce",
    "states",
    "survey",
]

ObservedBy = Literal["TCP_INFO", "sock_diag"]

#: Every state the lab reproduces, in the order of a connection's life: the
#: eleven RFC 793 states, then Linux's request socket (NEW_SYN_RECV).
ALL_STATES: tuple[TcpState, ...] = (
    TcpState.LISTEN,
    TcpState.SYN_SENT,
    TcpState.SYN_RCVD,
    TcpState.ESTABLISHED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
    TcpState.CLOSE_WAIT,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
    TcpState.TIME_WAIT,
    TcpState.CLOSED,
    TcpState.NEW_SYN_RECV,
)

# Buffer sizes of the zero-window recipes (the kernel doubles them).  The
# peer's window can never exceed ~4 KiB while our send buffer holds more,
# so once send() says EAGAIN and tcpi_notsent_bytes > 0, data is left that
# the peer (which never reads) will never let through, and a FIN queued
# behind it is never sent.
_SMALL_BUF = 4096
# TCP_DEFER_ACCEPT of the SYN_RCVD recipe, in seconds.  The request socket
# lives about this long (rounded up to a SYN-ACK retransmit boundary:
# 600 reads back as 607); after that the connection is accepted.
_DEFER_ACCEPT_S = 600
# How long the on_fd helper may take to start (an interpreter and an
# import in a fresh namespace), on top of the caller's timeout.
_HELPER_STARTUP_S = 10.0
_SO_ATTACH_FILTER = 26  # asm-generic/socket.h; not exported by the socket module


class LabUnavailable(Error):
    """A recipe cannot run here, for a stated reason.

    Raised by :func:`reproduce` when the variant asked for needs something
    this machine or user does not offer: ``on_fd=True`` for SYN_RCVD needs
    ``unshare -Urn`` (util-linux, with unprivileged user namespaces
    enabled), and TIME_WAIT or NEW_SYN_RECV can never be held on a file
    descriptor.  A subclass of :class:`pysockkit.Error`.

    Example::

        >>> import pysockkit as sk
        >>> try:
        ...     sk.lab.reproduce(sk.TcpState.SYN_RCVD, on_fd=True,
        ...                      unshare="/nonexistent/unshare")
        ... except sk.lab.LabUnavailable as exc:
        ...     print("not here:", exc.strerror)  # doctest: +ELLIPSIS
        not here: SYN_RCVD on a file descriptor needs `unshare -Urn` ...
    """


# --------------------------------------------------------------------------
# The recipe table


@dataclass(frozen=True, slots=True)
class Recipe:
    """How the lab produces one state, and how it sees it.

    ``how`` is the recipe in one line; ``observed`` the state the kernel
    reports for it (``SYN_RCVD`` for ``NEW_SYN_RECV``); ``observed_by`` is
    ``"TCP_INFO"`` or ``"sock_diag"``; ``needs`` is ``"-"`` or what beyond
    plain socket calls it takes; ``lasts`` how long the kernel keeps the
    state while the scene is held; ``on_fd`` marks the variant that holds a
    SYN_RCVD socket on a file descriptor.

    Example::

        >>> import pysockkit as sk
        >>> r = sk.lab.states().get(sk.TcpState.FIN_WAIT_2)
        >>> r.observed_by, r.needs
        ('TCP_INFO', '-')
    """

    state: TcpState
    how: str
    observed: TcpState
    observed_by: ObservedBy
    needs: str
    lasts: str
    on_fd: bool = False


_NS = "unshare -Urn"

_RECIPES: tuple[Recipe, ...] = (
    Recipe(TcpState.LISTEN, "bind() + listen()",
           TcpState.LISTEN, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.SYN_SENT,
           "listen(0) and one connection fill the accept queue; the listener "
           "drops our SYN, connect() waits",
           TcpState.SYN_SENT, "TCP_INFO", "-",
           "133 s of SYN retransmits (tcp_syn_retries), then ETIMEDOUT"),
    Recipe(TcpState.SYN_RCVD,
           "TCP_DEFER_ACCEPT on the listener; the client connects and sends "
           "nothing, its bare ACK is dropped",
           TcpState.SYN_RCVD, "sock_diag", "-",
           f"about {_DEFER_ACCEPT_S} s (TCP_DEFER_ACCEPT), then accepted"),
    Recipe(TcpState.ESTABLISHED, "connect() + accept()",
           TcpState.ESTABLISHED, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.FIN_WAIT_1,
           "the peer never reads (4 KiB buffer); we fill its window, then "
           "shutdown(SHUT_WR): the FIN waits behind unsent data",
           TcpState.FIN_WAIT_1, "TCP_INFO", "-",
           "until closed (zero-window probes are ACKed)"),
    Recipe(TcpState.FIN_WAIT_2,
           "shutdown(SHUT_WR); the peer ACKs the FIN (one delayed-ACK tick) "
           "and never closes",
           TcpState.FIN_WAIT_2, "TCP_INFO", "-",
           "until closed (tcp_fin_timeout applies to orphans only)"),
    Recipe(TcpState.CLOSE_WAIT, "the peer does shutdown(SHUT_WR); we never close",
           TcpState.CLOSE_WAIT, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.CLOSING,
           "the FIN_WAIT_1 recipe, then the peer does shutdown(SHUT_WR): its "
           "FIN crosses ours, which is still unsent",
           TcpState.CLOSING, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.LAST_ACK,
           "the peer does shutdown(SHUT_WR) and never reads; we fill its "
           "window, then shutdown(SHUT_WR)",
           TcpState.LAST_ACK, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.TIME_WAIT,
           "we close() first, then the peer closes; the kernel keeps a "
           "timewait sock, no descriptor",
           TcpState.TIME_WAIT, "sock_diag", "-",
           "60 s (2*MSL, fixed), also after the scene"),
    Recipe(TcpState.CLOSED,
           "connect() + accept(), then the peer aborts (SO_LINGER 0): the RST "
           "closes our socket, we keep the fd",
           TcpState.CLOSED, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.NEW_SYN_RECV,
           "the SYN_RCVD recipe: a request socket, NEW_SYN_RECV (12) inside "
           "Linux, reported as SYN_RCVD (3)",
           TcpState.SYN_RCVD, "sock_diag", "-",
           f"about {_DEFER_ACCEPT_S} s (TCP_DEFER_ACCEPT), then accepted"),
    Recipe(TcpState.SYN_RCVD,
           "in a private netns: a socket connects to its own port "
           "(simultaneous open) and a filter drops its SYN-ACK",
           TcpState.SYN_RCVD, "TCP_INFO", _NS,
           "129 s of SYN-ACK retransmits, then ETIMEDOUT", on_fd=True),
)

_RECIPES_BY_KEY: dict[tuple[TcpState, bool], Recipe] = {
    (r.state, r.on_fd): r for r in _RECIPES}


class RecipeTable(list[Recipe]):
    """The list of :class:`Recipe`, printable as a table.

    Example::

        >>> import pysockkit as sk
        >>> table = sk.lab.states()
        >>> len(table), table[0].state.name
        (13, 'LISTEN')
        >>> table.get(sk.TcpState.SYN_RCVD, on_fd=True).needs
        'unshare -Urn'
    """

    __slots__ = ()

    def get(self, state: StateLike, on_fd: bool = False) -> Recipe:
        """The recipe for *state* (and the ``on_fd`` variant if asked).

        Raises ``KeyError`` if there is none.

        Example::

            >>> states().get("time-wait").observed_by
            'sock_diag'
        """
        st = as_state(state)
        for r in self:
            if r.state is st and r.on_fd == on_fd:
                return r
        raise KeyError(f"no recipe for {st.name} with on_fd={on_fd}")

    def _rows(self) -> list[tuple[str, ...]]:
        return [(r.state.name + (" (fd)" if r.on_fd else ""), r.observed.name,
                 r.observed_by, r.needs, r.how) for r in self]

    def __str__(self) -> str:
        return _table(("state", "observed", "by", "needs", "how"), self._rows())

    def _repr_html_(self) -> str:
        return _html(("state", "observed", "by", "needs", "how"), self._rows())


def states() -> RecipeTable:
    """The recipe of every state the lab reproduces, as a table.

    One row per state of :data:`ALL_STATES`, plus the ``on_fd`` variant of
    SYN_RCVD.  ``print()`` it for a text table; each row is a
    :class:`Recipe`.

    Example::

        >>> import pysockkit as sk
        >>> [r.state.name for r in sk.lab.states() if r.observed_by == "sock_diag"]
        ['SYN_RCVD', 'TIME_WAIT', 'NEW_SYN_RECV']
    """
    return RecipeTable(_RECIPES)


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


class _Builder:
    """Collects sockets while a recipe runs; closes them all if it fails."""

    def __init__(self, fam: socket.AddressFamily, timeout: float) -> None:
        self.fam = fam
        self.host = loopback_host(fam)
        self.timeout = timeout
        self.deadline = time.perf_counter() + timeout
        self.res = _Resources()

    def sock(self, sndbuf: Optional[int] = None, rcvbuf: Optional[int] = None,
             abort: bool = True) -> socket.socket:
        s = self.res.add(socket.socket(self.fam, socket.SOCK_STREAM), abort)
        # Buffer sizes must be set before connect/listen: the window scale
        # is fixed in the handshake.
        if sndbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        return s

    def listener(self, backlog: int = 1, rcvbuf: Optional[int] = None) -> socket.socket:
        ls = self.sock(rcvbuf=rcvbuf, abort=False)
        ls.bind((self.host, 0))
        ls.listen(backlog)
        return ls

    def pair(self, peer_rcvbuf: Optional[int] = None,
             sock_sndbuf: Optional[int] = None) -> tuple[socket.socket, socket.socket]:
        """(client, accepted) connected over loopback; the listener is closed."""
        ls = self.listener(rcvbuf=peer_rcvbuf)
        cli = self.sock(sndbuf=sock_sndbuf)
        cli.settimeout(self.timeout)
        cli.connect(_name(ls))
        ls.settimeout(self.timeout)
        peer, _ = ls.accept()
        self.res.add(peer)
        self.drop(ls)
        return cli, peer

    def drop(self, s: socket.socket) -> None:
        """Close a socket the scene no longer needs."""
        for i, (x, _) in enumerate(self.res.socks):
            if x is s:
                del self.res.socks[i]
                break
        s.close()

    def order(self, *first: socket.socket) -> None:
        """Close these first on exit (the socket in the state, then its peer)."""
        rest = [(s, a) for s, a in self.res.socks if all(s is not f for f in first)]
        head = [(s, a) for f in first for s, a in self.res.socks if s is f]
        self.res.socks = head + rest

    def scene(self, state: TcpState, observed: TcpState, observed_by: ObservedBy,
              elapsed: float, four: tuple[str, int, str, int], note: str = "",
              **kw: Any) -> Scene:
        _settle(self.res, self.timeout)
        return Scene(state=state, observed=observed,
                     how=_RECIPES_BY_KEY[(state, False)].how,
                     observed_by=observed_by, elapsed_s=elapsed, family=self.fam,
                     address=(four[0], four[1]), four_tuple=four, note=note,
                     _res=self.res, **kw)


def _settle(res: _Resources, timeout: float) -> None:
    """Give every open socket of a scene the same, predictable mode: a
    timeout (so a recv() on a scene's socket in a notebook cannot hang)."""
    for sock, _ in res.socks:
        if sock.fileno() >= 0:
            sock.settimeout(timeout)


def _fd_scene(b: _Builder, state: TcpState, sock: socket.socket, elapsed: float,
              four: tuple[str, int, str, int], note: str = "", **kw: Any) -> Scene:
    """A scene whose socket is watched with TCP_INFO; its diag entry too."""
    return b.scene(state, _fd_state(sock), "TCP_INFO", elapsed, four, note,
                   sock=sock, entry=_entry_for(sock, four), **kw)


# --------------------------------------------------------------------------
# The recipes.  Each takes a _Builder and returns the Scene, in the state.


def _listen(b: _Builder) -> Scene:
    s = b.sock(abort=False)
    s.bind((b.host, 0))
    t0 = time.perf_counter()
    s.listen(8)
    dt = _wait_fd(s, TcpState.LISTEN, t0, b.timeout, "LISTEN")
    four = (*_name(s), _any(b.fam), 0)
    return _fd_scene(b, TcpState.LISTEN, s, dt, four, listener=s)


def _syn_sent(b: _Builder) -> Scene:
    # backlog 0: the accept queue holds one connection (the kernel tests
    # "queued > backlog"); with it full, the listener drops every SYN
    # (ListenOverflows), syncookies or not.  Nobody calls accept().
    ls = b.listener(backlog=0)
    filler = b.sock()
    filler.settimeout(b.timeout)
    filler.connect(_name(ls))
    # the server side of the handshake may finish after connect() returns
    _wait(lambda: tcp_info(ls).unacked_segs or 0, lambda n: n >= 1,
          time.perf_counter(), b.timeout, "a full accept queue",
          lambda n: f"{n} queued")
    s = b.sock()
    s.setblocking(False)
    t0 = time.perf_counter()
    err = s.connect_ex(_name(ls))
    if err not in (errno.EINPROGRESS, errno.EAGAIN):
        raise Error(err, f"lab: SYN_SENT: connect() gave {os.strerror(err)}")
    dt = _wait_fd(s, TcpState.SYN_SENT, t0, b.timeout, "SYN_SENT")
    b.order(s, filler)
    four = (*_name(s), *_name(ls))
    return _fd_scene(b, TcpState.SYN_SENT, s, dt, four, listener=ls, others=(filler,),
                     note="the listener's accept queue is full, so it drops our "
                          "SYN and its retransmits; accept() on it would free a slot")


_REQUEST_NOTE = (
    "a request socket: Linux keeps the half-open connection as NEW_SYN_RECV "
    "(12) with no socket or descriptor of its own; sock_diag and ss report it "
    "as SYN_RCVD (3) with inode 0. The client side is already ESTABLISHED.")


def _request_sock(b: _Builder, state: TcpState) -> Scene:
    ls = b.sock(abort=False)
    # While the deferral lasts, tcp_check_req() drops a bare ACK (no data)
    # instead of completing the handshake, so the request socket stays.
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, _DEFER_ACCEPT_S)
    ls.bind((b.host, 0))
    ls.listen(8)
    cli = b.sock()
    cli.setblocking(False)
    t0 = time.perf_counter()
    err = cli.connect_ex(_name(ls))
    if err not in (0, errno.EINPROGRESS):
        raise Error(err, f"lab: {state.name}: connect() gave {os.strerror(err)}")
    four = (*_name(ls), *_name(cli))
    e, dt = _wait_diag(four, TcpState.SYN_RCVD, t0, b.timeout, state.name)
    # exit: the client's RST drops the request socket at once
    b.order(cli, ls)
    return b.scene(state, e.state, "sock_diag", dt, four, _REQUEST_NOTE,
                   peer=cli, listener=ls, entry=e)


def _established(b: _Builder) -> Scene:
    ls = b.listener()
    s = b.sock()
    s.settimeout(b.timeout)
    t0 = time.perf_counter()
    s.connect(_name(ls))
    dt = _wait_fd(s, TcpState.ESTABLISHED, t0, b.timeout, "ESTABLISHED")
    ls.settimeout(b.timeout)
    peer, _ = ls.accept()
    b.res.add(peer)
    b.drop(ls)
    return _fd_scene(b, TcpState.ESTABLISHED, s, dt, _tuple(s), peer=peer)


def _fin_wait_1(b: _Builder) -> tuple[socket.socket, socket.socket, float]:
    s, peer = b.pair(peer_rcvbuf=_SMALL_BUF, sock_sndbuf=_SMALL_BUF)
    _fill(s, b.deadline)
    t0 = time.perf_counter()
    s.shutdown(socket.SHUT_WR)  # FIN_WAIT_1 at once; the FIN is queued
    dt = _wait_fd(s, TcpState.FIN_WAIT_1, t0, b.timeout, "FIN_WAIT_1")
    return s, peer, dt


def _fin_wait_1_scene(b: _Builder) -> Scene:
    s, peer, dt = _fin_wait_1(b)
    return _fd_scene(b, TcpState.FIN_WAIT_1, s, dt, _tuple(s), peer=peer,
                     note="our FIN is queued behind data the peer's zero window "
                          "holds back; it is never sent, so never ACKed")


def _fin_wait_2(b: _Builder) -> Scene:
    s, peer = b.pair()
    four = _tuple(s)
    t0 = time.perf_counter()
    s.shutdown(socket.SHUT_WR)
    # the peer ACKs the FIN one tick later (delayed ACK, pingpong mode)
    dt = _wait_fd(s, TcpState.FIN_WAIT_2, t0, b.timeout, "FIN_WAIT_2")
    return _fd_scene(b, TcpState.FIN_WAIT_2, s, dt, four, peer=peer,
                     note="the peer (in CLOSE_WAIT) never closes; with the fd kept "
                          "tcp_fin_timeout does not apply")


def _close_wait(b: _Builder) -> Scene:
    s, peer = b.pair()
    four = _tuple(s)
    t0 = time.perf_counter()
    peer.shutdown(socket.SHUT_WR)
    dt = _wait_fd(s, TcpState.CLOSE_WAIT, t0, b.timeout, "CLOSE_WAIT")
    return _fd_scene(b, TcpState.CLOSE_WAIT, s, dt, four, peer=peer,
                     note="recv() returns b'' (EOF) and we may still send; the "
                          "state lasts until we close")


def _closing(b: _Builder) -> Scene:
    s, peer, _ = _fin_wait_1(b)
    t0 = time.perf_counter()
    peer.shutdown(socket.SHUT_WR)
    dt = _wait_fd(s, TcpState.CLOSING, t0, b.timeout, "CLOSING")
    return _fd_scene(b, TcpState.CLOSING, s, dt, _tuple(s), peer=peer,
                     note="both sides have closed; the peer's FIN is ACKed (it is "
                          "in FIN_WAIT_2), ours is still stuck behind unsent data")


def _last_ack(b: _Builder) -> Scene:
    s, peer = b.pair(peer_rcvbuf=_SMALL_BUF, sock_sndbuf=_SMALL_BUF)
    peer.shutdown(socket.SHUT_WR)
    _wait_fd(s, TcpState.CLOSE_WAIT, time.perf_counter(), b.timeout,
             "CLOSE_WAIT (before LAST_ACK)")
    _fill(s, b.deadline)
    t0 = time.perf_counter()
    s.shutdown(socket.SHUT_WR)
    dt = _wait_fd(s, TcpState.LAST_ACK, t0, b.timeout, "LAST_ACK")
    return _fd_scene(b, TcpState.LAST_ACK, s, dt, _tuple(s), peer=peer,
                     note="the peer closed first (it is in FIN_WAIT_2); our FIN "
                          "waits behind data its zero window holds back")


def _time_wait(b: _Builder) -> Scene:
    s, peer = b.pair()
    four = _tuple(s)
    b.drop(s)        # we close first: FIN; the orphan goes FIN_WAIT_1/2
    t0 = time.perf_counter()
    b.drop(peer)     # the peer closes: its FIN moves ours to TIME_WAIT
    e, dt = _wait_diag(four, TcpState.TIME_WAIT, t0, b.timeout, "TIME_WAIT")
    return b.scene(TcpState.TIME_WAIT, e.state, "sock_diag", dt, four,
                   "a timewait sock, visible only to sock_diag (had we kept the "
                   "fd with shutdown(), TCP_INFO would say CLOSED); it lingers "
                   "60 s after the scene, nothing unprivileged can remove it",
                   entry=e)


def _closed(b: _Builder) -> Scene:
    s, peer = b.pair()
    four = _tuple(s)
    t0 = time.perf_counter()
    _abort(peer)
    b.drop(peer)     # RST
    dt = _wait_fd(s, TcpState.CLOSED, t0, b.timeout, "CLOSED")
    return _fd_scene(b, TcpState.CLOSED, s, dt, four,
                     note="reset by the peer; not listed by sock_diag or ss. The "
                          "first recv()/send() raises ECONNRESET. A fresh socket() "
                          "is CLOSED too")


_BUILDERS: dict[TcpState, Callable[[_Builder], Scene]] = {
    TcpState.LISTEN: _listen,
    TcpState.SYN_SENT: _syn_sent,
    TcpState.SYN_RCVD: lambda b: _request_sock(b, TcpState.SYN_RCVD),
    TcpState.NEW_SYN_RECV: lambda b: _request_sock(b, TcpState.NEW_SYN_RECV),
    TcpState.ESTABLISHED: _established,
    TcpState.FIN_WAIT_1: _fin_wait_1_scene,
    TcpState.FIN_WAIT_2: _fin_wait_2,
    TcpState.CLOSE_WAIT: _close_wait,
    TcpState.CLOSING: _closing,
    TcpState.LAST_ACK: _last_ack,
    TcpState.TIME_WAIT: _time_wait,
    TcpState.CLOSED: _closed,
}


def reproduce(
    state: StateLike,
    *,
    family: FamilyLike = "ipv4",
    timeout: float = 2.0,
    on_fd: bool = False,
    unshare: str = "unshare",
) -> Scene:
    """Put a loopback socket in *state* and hold it there; returns a :class:`Scene`.

    *state* is a :class:`pysockkit.TcpState`, its number or any of its
    names (``"CLOSE_WAIT"``, ``"close-wait"``, ``"SYN-RECV"``).  The scene
    is already in the state when this returns; use it as a context
    manager (or call ``close()``) to release every socket.

    - *family*: ``"ipv4"`` (127.0.0.1) or ``"ipv6"`` (::1), or
      ``socket.AF_INET``/``AF_INET6``.
    - *timeout*: seconds the state may take to appear (the slowest,
      FIN_WAIT_2, waits for a delayed ACK: 1 to 8 ms).  Raises
      :class:`pysockkit.Timeout` naming the state last seen.
    - *on_fd*: for SYN_RCVD, hold a full socket with a descriptor
      (``scene.sock``) instead of a request socket.  It is made by a helper
      process in a private user and network namespace (``unshare -Urn``),
      which sends the descriptor back; *unshare* is the command used.
      Raises :class:`LabUnavailable` if that cannot run here.  For states
      that always have a descriptor, ``on_fd`` changes nothing; TIME_WAIT
      and NEW_SYN_RECV never have one (LabUnavailable).

    Needs no privileges.  Uses only 127.0.0.1 / ::1 and ephemeral ports.

    Example::

        >>> import socket, pysockkit as sk
        >>> with sk.lab.reproduce(sk.TcpState.TIME_WAIT) as scene:
        ...     scene.sock is None, scene.observed_by, scene.entry.timer
        (True, 'sock_diag', 'time_wait')
        >>> with sk.lab.reproduce("SYN_SENT", family=socket.AF_INET6) as scene:
        ...     sk.tcp_info(scene.sock).state.name
        'SYN_SENT'
    """
    st = as_state(state)
    fam = parse_family(family)
    timeout = check_timeout(timeout, allow_none=False)
    if timeout == 0:
        raise ValueError("timeout must be > 0 seconds: the state takes a moment to appear")
    if on_fd:
        if st in (TcpState.TIME_WAIT, TcpState.NEW_SYN_RECV):
            raise LabUnavailable(
                errno.EOPNOTSUPP,
                f"{st.name} never has a file descriptor on Linux: it is "
                f"{'a timewait sock' if st is TcpState.TIME_WAIT else 'a request socket'}"
                f"; reproduce it without on_fd and observe it with sock_diag")
        if st is TcpState.SYN_RCVD:
            return _syn_rcvd_on_fd(fam, timeout, unshare)
    b = _Builder(fam, timeout)
    try:
        return _BUILDERS[st](b)
    except BaseException:
        b.res.close()
        raise


# --------------------------------------------------------------------------
# SYN_RCVD on a file descriptor: a helper in `unshare -Urn`


def _netns_helper(target: str, args: Sequence[str], what: str, timeout: float,
                  unshare: str) -> tuple[_Resources, bytes, list[int]]:
    """Run ``unshare -Urn PYTHON -c "import MODULE as m; m.FUNC()" FD ARGS...``:
    a helper in a private user and network namespace (root there, so it
    may bring lo up, attach socket filters and open packet sockets), with
    a SEQPACKET channel on FD.  *target* is ``"module:function"``.
    Returns the resources to release (helper process and channel), the
    helper's report (a message, or the chunks of one: see
    :func:`_send_report`) and the descriptors sent with it.

    Raises :class:`LabUnavailable` when the helper cannot run (no
    sys.executable, no *unshare* command, or unshare fails, as it does
    where unprivileged user namespaces are disabled: the message says
    *what* needs them), and :class:`pysockkit.Timeout` when it does not
    report within *timeout* seconds plus its start-up time.
    """
    if not sys.executable:
        raise LabUnavailable(errno.ENOENT, f"{what}: no sys.executable to run the helper with")
    exe = shutil.which(unshare)
    if exe is None:
        raise LabUnavailable(errno.ENOENT, f"{what} (util-linux): {unshare!r} not found")
    module, _, func = target.partition(":")
    # SEQPACKET: one message per datagram, and EOF when the other end closes
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    res = _Resources()
    res.channel = parent
    try:
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
        cmd = [exe, "-Urn", sys.executable, "-c",
               f"import {module} as m; m.{func}()", str(child.fileno()), *args]
        try:
            res.proc = subprocess.Popen(
                cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise LabUnavailable(exc.errno or errno.ENOENT,
                                 f"{what}: cannot run {exe}: {exc}") from exc
        finally:
            child.close()
        limit = timeout + _HELPER_STARTUP_S
        try:
            msg, fds = _recv_report(parent, limit)
        except socket.timeout:
            raise Timeout(f"lab: the {_NS} helper did not report within "
                          f"{limit:g} s") from None
        for fd in fds:
            res.add(socket.socket(fileno=fd))
        if not msg:
            proc = res.proc
            _, err = proc.communicate(timeout=5.0)
            res.proc = None
            text = err.decode(errors="replace").strip().splitlines()
            raise LabUnavailable(
                errno.EPERM,
                f"{what}: `{exe} -Urn` exited with status {proc.returncode}"
                + (f": {text[-1]}" if text else ""))
        return res, msg, fds
    except BaseException:
        res.close()
        raise


_CHUNK = 60000  # bytes per SEQPACKET message of a long report


def _send_report(chan: socket.socket, data: bytes) -> None:
    """Send a report of any length as chunks: ``+`` before each but the
    last, ``.`` before the last (:func:`_recv_report` joins them)."""
    for i in range(0, max(1, len(data)), _CHUNK):
        last = i + _CHUNK >= len(data)
        chan.send((b"." if last else b"+") + data[i:i + _CHUNK])


def _recv_report(chan: socket.socket, limit: float) -> tuple[bytes, list[int]]:
    """One report from a helper: a single message (with the descriptors
    sent with it), or the chunks of :func:`_send_report` joined.  b""
    if the helper closed its end without a word.  Raises socket.timeout
    after *limit* seconds."""
    deadline = time.monotonic() + limit
    chan.settimeout(limit)
    msg, fds, _, _ = socket.recv_fds(chan, 65536, 4)
    if msg[:1] not in (b"+", b"."):
        return msg, list(fds)
    parts = [msg[1:]]
    while msg[:1] == b"+":
        chan.settimeout(max(0.001, deadline - time.monotonic()))
        msg = chan.recv(_CHUNK + 1)
        if not msg:
            break
        parts.append(msg[1:])
    return b"".join(parts), list(fds)


def _syn_rcvd_on_fd(fam: socket.AddressFamily, timeout: float, unshare: str) -> Scene:
    what = "SYN_RCVD on a file descriptor needs `unshare -Urn`"
    res, msg, fds = _netns_helper("pysockkit.lab:_helper_main",
                                  [str(int(fam)), repr(timeout)], what, timeout, unshare)
    try:
        report = json.loads(msg)
        if "error" in report:
            if report.get("kind") == "timeout":
                raise Timeout(report["error"])
            raise LabUnavailable(int(report.get("errno") or errno.EPERM),
                                 f"{what}: {report['error']}")
        if not fds:
            raise Error(errno.EPROTO, "lab: the helper sent no descriptor")
        sock = res.socks[0][0]
        observed = _fd_state(sock)  # seen here, through the descriptor we got
        e = report["entry"]
        entry = None if e is None else SocketEntry(
            family=socket.AddressFamily(e["family"]), state=TcpState(e["state"]),
            local=(e["local"][0], e["local"][1]), remote=(e["remote"][0], e["remote"][1]),
            inode=e["inode"], uid=e["uid"], timer=e["timer"], expires_s=e["expires_s"],
            retrans=e["retrans"], recv_q=e["recv_q"], send_q=e["send_q"],
            cookie=e["cookie"], ifindex=e["ifindex"])
        four = (str(report["four"][0]), int(report["four"][1]),
                str(report["four"][2]), int(report["four"][3]))
        assert res.proc is not None
        _settle(res, timeout)
        return Scene(
            state=TcpState.SYN_RCVD, observed=observed,
            how=_RECIPES_BY_KEY[(TcpState.SYN_RCVD, True)].how,
            observed_by="TCP_INFO", elapsed_s=float(report["elapsed_s"]),
            family=fam, address=(four[0], four[1]), four_tuple=four, sock=sock,
            entry=entry, netns_pid=res.proc.pid, _res=res,
            note="a full socket in SYN_RCVD, living in the helper's private network "
                 "namespace (host sock_diag and ss do not see it; nsenter -t "
                 "netns_pid -n ss -tan does); a socket filter drops every "
                 "SYN-ACK, so the handshake never completes")
    except BaseException:
        res.close()
        raise


def _lo_up() -> None:
    """Bring lo up in a fresh network namespace (SIOCSIFFLAGS, IFF_UP)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, ifr)[:18])[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))     # SIOCSIFFLAGS


def _sock_fprog(code: Sequence[tuple[int, int, int, int]]) -> bytes:
    """The ``struct sock_fprog`` for SO_ATTACH_FILTER of a classic BPF
    program given as (code, jt, jf, k) rows.  The code buffer is kept alive
    on the module for the life of the process (the kernel copies it during
    setsockopt, but keep it simple and safe)."""
    import ctypes

    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
    _KEEP.append(buf)
    return struct.pack("HL", len(code), ctypes.addressof(buf))


def _drop_synack_filter() -> bytes:
    """A classic BPF socket filter that drops TCP segments with SYN and ACK
    both set and accepts the rest.  A TCP socket filter sees the segment
    from its TCP header: byte 13 holds the flags."""
    return _sock_fprog([
        (0x30, 0, 0, 13),          # ldb [13]          TCP flags
        (0x54, 0, 0, 0x12),        # and #SYN|ACK
        (0x15, 0, 1, 0x12),        # jeq #SYN|ACK, drop, accept
        (0x06, 0, 0, 0),           # drop: ret #0
        (0x06, 0, 0, 0xFFFFFFFF),  # accept: ret #-1
    ])


_KEEP: list[Any] = []


def _helper_start() -> tuple[socket.socket, Callable[..., None], bool]:
    """The start of a netns helper (see :func:`_netns_helper`): its channel
    to the parent (the descriptor in argv[1]), ``fail(kind, text,
    errno=0)`` that reports an error on it (kind: ``"unavailable"``,
    ``"timeout"`` or ``"error"``), and whether lo came up (if not, the
    failure is already reported)."""
    chan = socket.socket(fileno=int(sys.argv[1]))

    def fail(kind: str, text: str, err: int = 0) -> None:
        chan.send(json.dumps({"error": text, "kind": kind, "errno": err}).encode())

    try:
        _lo_up()
    except OSError as exc:
        fail("unavailable", f"cannot bring lo up in the new netns: {exc}", exc.errno or 0)
        return chan, fail, False
    return chan, fail, True


def _helper_main() -> None:
    """Entry point of the ``unshare -Urn`` helper (argv: channel fd,
    family, timeout).  Builds a SYN_RCVD socket by simultaneous open,
    sends its descriptor and a JSON report back, then waits for EOF."""
    fam_num, timeout = int(sys.argv[2]), float(sys.argv[3])
    chan, fail, up = _helper_start()
    fam = socket.AddressFamily(fam_num)
    host = loopback_host(fam)
    sock: Optional[socket.socket] = None

    try:
        if not up:
            return
        sock = socket.socket(fam, socket.SOCK_STREAM)
        deadline = time.perf_counter() + timeout
        while True:  # ::1 appears on lo a moment after it is up
            try:
                sock.bind((host, 0))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL or time.perf_counter() > deadline:
                    raise
                time.sleep(0.001)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _drop_synack_filter())
        except OSError as exc:
            return fail("unavailable", f"SO_ATTACH_FILTER on a TCP socket: {exc}",
                        exc.errno or 0)
        local = _name(sock)
        sock.setblocking(False)
        t0 = time.perf_counter()
        # connect to our own port: our SYN comes back to us (simultaneous
        # open) -> SYN_RECV, and we answer with a SYN-ACK that the filter
        # drops on its way in; so the handshake never completes
        err = sock.connect_ex(local)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect: {os.strerror(err)}")
        try:
            _, dt = _wait(lambda: _fd_state(sock) if sock else TcpState.CLOSED,
                          lambda s: s is TcpState.SYN_RCVD, t0, timeout,
                          "SYN_RCVD (TCP_INFO state 3, on fd)",
                          lambda s: f"{s.name} by TCP_INFO")
        except Timeout as exc:
            return fail("timeout", str(exc))
        four = (*local, *local)
        e = _lookup(four)
        entry = None if e is None else {
            "family": int(e.family), "state": int(e.state), "local": list(e.local),
            "remote": list(e.remote), "inode": e.inode, "uid": e.uid, "timer": e.timer,
            "expires_s": e.expires_s, "retrans": e.retrans, "recv_q": e.recv_q,
            "send_q": e.send_q, "cookie": e.cookie, "ifindex": e.ifindex}
        report = {"elapsed_s": dt, "four": list(four), "entry": entry}
        socket.send_fds(chan, [json.dumps(report).encode()], [sock.fileno()])
        while chan.recv(1):  # hold until the parent closes the channel
            pass
    except Exception as exc:  # report anything else; the parent raises it
        fail("unavailable", f"{type(exc).__name__}: {exc}",
             getattr(exc, "errno", 0) or 0)
    finally:
        if sock is not None:
            _abort(sock)
            sock.close()
        chan.close()


# --------------------------------------------------------------------------
# Survey: every state in turn


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of :func:`survey`: a state reproduced (or not) and released.

    ``observed`` and ``elapsed_s`` are ``None`` and ``error`` says why
    when the state could not be reproduced.

    Example::

        >>> o = survey(states=[TcpState.LISTEN], include_on_fd=False)[0]
        >>> o.state.name, o.observed.name, o.observed_by, o.error
        ('LISTEN', 'LISTEN', 'TCP_INFO', None)
    """

    state: TcpState
    on_fd: bool
    how: str
    observed_by: ObservedBy
    observed: Optional[TcpState]
    elapsed_s: Optional[float]
    error: Optional[str] = None

    @property
    def reached(self) -> bool:
        """True if the kernel reported the state (request socket: SYN_RCVD).

        Example::

            >>> Outcome(TcpState.LISTEN, False, "", "TCP_INFO", None, None, "x").reached
            False
        """
        if self.observed is None:
            return False
        return self.observed is self.state or (
            self.state is TcpState.NEW_SYN_RECV and self.observed is TcpState.SYN_RCVD)


class Survey(list[Outcome]):
    """The rows of :func:`survey`, printable as a table.

    Example::

        >>> s = survey(states=[TcpState.CLOSE_WAIT], include_on_fd=False)
        >>> print(s)  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        state       observed    by        reached in  how
        CLOSE_WAIT  CLOSE_WAIT  TCP_INFO  ... ms  the peer does shutdown(SHUT_WR); we never close
        >>> s.all_reached
        True
    """

    __slots__ = ()

    @property
    def all_reached(self) -> bool:
        """True if every row reached its state.

        Example::

            >>> Survey().all_reached
            True
        """
        return all(o.reached for o in self)

    _HEAD = ("state", "observed", "by", "reached in", "how")

    def _rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for o in self:
            name = o.state.name + (" (fd)" if o.on_fd else "")
            if o.observed is None or o.elapsed_s is None:
                rows.append((name, "-", o.observed_by, "-", f"not reproduced: {o.error}"))
            else:
                rows.append((name, o.observed.name, o.observed_by,
                             f"{o.elapsed_s * 1e3:.3f} ms", o.how))
        return rows

    def __str__(self) -> str:
        return _table(self._HEAD, self._rows(), right=frozenset({3}))

    def _repr_html_(self) -> str:
        return _html(self._HEAD, self._rows())


def survey(
    family: FamilyLike = "ipv4",
    *,
    states: Optional[Sequence[StateLike]] = None,
    include_on_fd: bool = True,
    timeout: float = 2.0,
) -> Survey:
    """Reproduce every state in turn (each released before the next) and
    return what happened, as a printable :class:`Survey`.

    *states* defaults to :data:`ALL_STATES`; *include_on_fd* adds the
    SYN_RCVD-on-a-descriptor variant (a row with ``error`` set where
    ``unshare -Urn`` is unavailable).  Errors other than
    :class:`LabUnavailable` and :class:`pysockkit.Timeout` propagate.

    Example::

        >>> import pysockkit as sk
        >>> print(sk.lab.survey())  # doctest: +SKIP
        state         observed      by         reached in  how
        LISTEN        LISTEN        TCP_INFO      0.015 ms  bind() + listen()
        ...
    """
    todo: list[tuple[TcpState, bool]] = [
        (as_state(s), False) for s in (ALL_STATES if states is None else states)]
    if include_on_fd:
        todo.append((TcpState.SYN_RCVD, True))
    out = Survey()
    for st, fd in todo:
        recipe = _RECIPES_BY_KEY[(st, fd)]
        try:
            with reproduce(st, family=family, timeout=timeout, on_fd=fd) as scene:
                out.append(Outcome(st, fd, scene.how, scene.observed_by,
                                   scene.observed, scene.elapsed_s))
        except (LabUnavailable, Timeout) as exc:
            out.append(Outcome(st, fd, recipe.how, recipe.observed_by, None, None,
                               exc.strerror or str(exc)))
    return out


# Conversations (pysockkit/_conversation.py): whole scenarios, recorded.
from ._conversation import ConversationTable, conversation, conversations  # noqa: E402
