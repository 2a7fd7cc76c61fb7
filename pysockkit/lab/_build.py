"""The recipes at work: a :class:`_Builder` collects the sockets of one
recipe, each recipe function builds its state, :func:`reproduce` picks one."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Optional

from .._enums import StateLike, TcpState, as_state
from .._errors import Error
from .._net import FamilyLike, check_timeout, loopback_host, parse_family
from .._observe import tcp_info
from ._synrcvd import _syn_rcvd_on_fd
from .recipes import _DEFER_ACCEPT_S, _RECIPES_BY_KEY, LabUnavailable, ObservedBy
from .scene import (
    Scene,
    _abort,
    _any,
    _entry_for,
    _fd_state,
    _fill,
    _name,
    _Resources,
    _settle,
    _tuple,
    _wait,
    _wait_diag,
    _wait_fd,
)

# Buffer sizes of the zero-window recipes (the kernel doubles them).  The
# peer's window can never exceed ~4 KiB while our send buffer holds more,
# so once send() says EAGAIN and tcpi_notsent_bytes > 0, data is left that
# the peer (which never reads) will never let through, and a FIN queued
# behind it is never sent.
_SMALL_BUF = 4096


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
