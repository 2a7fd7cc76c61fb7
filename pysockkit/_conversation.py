"""Conversations: TCP scenarios played on a private loopback and recorded.

Each scenario opens a real connection with pysockkit (framed messages
where data flows), does one thing -- a close, an abort, a lost ACK -- and
records every segment (the C capture, ``csrc/core/capture.c``) and both ends'
states (the state sampler: the client's descriptor through TCP_INFO, the
server's end by 4-tuple through sock_diag, the listener through
TCP_INFO).  :func:`conversation` runs it in a helper process in a private
user and network namespace (``unshare -Urn``, the lab's SYN_RCVD recipe
uses the same helper): there the helper is root over its own loopback, so
it may capture packets and attach socket filters without any privilege
on the host, and no other traffic shares the loopback.  The recording
comes back as a :class:`~pysockkit.Recording`.

``docs/packets.md`` explains what each scenario shows and why.

Example::

    >>> import pysockkit as sk
    >>> print(sk.lab.conversations())                   # doctest: +SKIP
    >>> rec = sk.lab.conversation("close")              # doctest: +SKIP
    >>> [str(s.flags) for s in rec.segments]            # doctest: +SKIP
    ['SYN', 'SYN|ACK', 'ACK', 'FIN|ACK', 'ACK', 'FIN|ACK', 'ACK']
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from . import _core
from ._capture import TcpFlags, clean_observed, segments_from_raw
from ._conn import Connection, Listener, listen
from ._display import html_table, text_table
from ._enums import TcpState
from ._errors import ConnectionClosed, Error, Timeout
from ._net import FamilyLike, check_timeout, loopback_host, parse_family
from ._observe import fd_state
from ._recording import Recording
from ._types import Framing, Heartbeat, Keepalive

__all__ = ["conversation", "conversations", "run_scenario", "ConversationTable", "SCENARIOS"]

_native: Any = _core

Address = tuple[str, int]

_SO_ATTACH_FILTER, _SO_DETACH_FILTER = 26, 27
_CLOCK_MONOTONIC_COARSE = 6          # advances once per kernel tick (jiffy)
_INTERVAL = 0.0002                   # state sampler: 5 kHz
_FRAMING = Framing()


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *cond* (spinning 2 ms, then every 0.5 ms) until true; Timeout
    naming *what* after *timeout* seconds."""
    t0 = time.monotonic()
    while not cond():
        dt = time.monotonic() - t0
        if dt > timeout:
            raise Timeout(f"conversation: {what} did not happen within {timeout:g} s")
        if dt > 0.002:
            time.sleep(0.0005)


class _Stage:
    """One scenario's set: a listener (or a bound, non-listening port), the
    capture on its port, a client socket bound before it connects, and the
    state samplers on both ends."""

    def __init__(self, fam: socket.AddressFamily, *, listening: bool = True,
                 heartbeat: Optional[Heartbeat] = None,
                 client_keepalive: Optional[Keepalive] = None,
                 timeout: float = 10.0) -> None:
        self.fam = fam
        self.host = loopback_host(fam)
        self.heartbeat = heartbeat
        self.client_keepalive = client_keepalive
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout   # the whole scenario's
        self.lost: list[int] = []
        self.notes: dict[int, str] = {}
        # observations read by the scenario itself, per end (kept as they are)
        self.extra: dict[Address, list[tuple[int, TcpState, str]]] = {}
        self.conns: list[Connection] = []
        self.listener: Optional[Listener] = None
        self.bound: Optional[socket.socket] = None
        self.watchers: list[Any] = []
        self.cap: Any = None
        try:
            if listening:
                self.listener = listen((self.host, 0), framing=_FRAMING, heartbeat=heartbeat)
                self.server: Address = (self.host, self.listener.address[1])
            else:
                self.bound = socket.socket(fam, socket.SOCK_STREAM)
                self.bound.bind((self.host, 0))
                self.server = (self.host, self.bound.getsockname()[1])
            self.cap = _native.Capture(ports=(self.server[1],), max_segments=4096,
                                       payload_bytes=256, max_seconds=120.0)
            self.start_ns = int(self.cap.stats()["start_ns"])
            # what the server end is before any SYN: the listener (or the
            # bound socket) as TCP_INFO shows it, read after the capture began
            fd = self.listener.fileno() if self.listener is not None else self.bound.fileno()  # type: ignore[union-attr]
            self.server_initial = (time.monotonic_ns(), fd_state(fd))
            self.client = socket.socket(fam, socket.SOCK_STREAM)
            self.client.bind((self.host, 0))
            self.client_addr: Address = (self.host, self.client.getsockname()[1])
            self.client_initial = (time.monotonic_ns(), fd_state(self.client.fileno()))
            self.extra = {self.client_addr: [], self.server: []}
            # Both ends are followed by 4-tuple through sock_diag: it sees the
            # request socket, the orphan after close() and TIME_WAIT, and it
            # does not depend on catching the descriptor connected before it
            # is closed (on a loaded machine a whole short connection can
            # fall between two samples of a descriptor).
            self.cw = _native.Watcher(tuple=(int(fam), self.client_addr[0], self.client_addr[1],
                                             self.server[0], self.server[1]),
                                      interval=_INTERVAL)
            self.watchers.append(self.cw)
            self.sw = _native.Watcher(tuple=(int(fam), self.server[0], self.server[1],
                                             self.client_addr[0], self.client_addr[1]),
                                      interval=_INTERVAL)
            self.watchers.append(self.sw)
        except BaseException:
            self.release()
            raise

    # ------------------------------------------------------------ actions

    def left(self, limit: Optional[float] = None) -> float:
        """Seconds a wait may take: *limit* (or the rest), but never past
        the scenario's deadline; Timeout once that has passed."""
        rest = self.deadline - time.monotonic()
        if rest <= 0:
            raise Timeout(f"conversation: the scenario did not finish within "
                          f"{self.timeout:g} s")
        return rest if limit is None else min(limit, rest)

    def open(self) -> tuple[Connection, Connection]:
        """connect() + accept(): the three-way handshake."""
        assert self.listener is not None
        self.client.settimeout(self.left())
        self.client.connect(self.server)
        fd = self.client.detach()           # the same descriptor: the sampler follows it
        cli = Connection(fd, _FRAMING, self.heartbeat, self.client_keepalive)
        self.conns.append(cli)
        srv = self.listener.accept(timeout=self.left())
        self.conns.append(srv)
        return cli, srv

    def segments(self, start: int = 0) -> list[tuple[Any, ...]]:
        return list(self.cap.segments(start))

    def wait_segment(self, pred: Callable[[tuple[Any, ...]], bool], what: str,
                     timeout: Optional[float] = None, start: int = 0) -> int:
        """Wait until a captured segment (index >= start) satisfies *pred*;
        returns its index."""
        limit = self.left(timeout)
        deadline = time.monotonic() + limit
        seen = start
        while True:
            batch = self.segments(seen)
            for k, raw in enumerate(batch):
                if pred(raw):
                    return seen + k
            seen += len(batch)        # exactly what was looked at: none is skipped
            left = deadline - time.monotonic()
            if left <= 0:
                got = ", ".join(f"{'>' if _from(r, self.client_addr) else '<'}"
                                f"{_raw_flags(r)}" for r in self.segments())
                raise Timeout(f"conversation: {what} was not captured within {limit:g} s "
                              f"(captured: {got or 'nothing'})")
            self.cap.wait(seen + 1, min(left, 0.05))

    def quiet(self, seconds: float = 0.03) -> None:
        """Wait until no segment has come for *seconds* (bounded)."""
        deadline = time.monotonic() + self.left()
        n = int(self.cap.stats()["seen"])
        while time.monotonic() < deadline:
            m = int(self.cap.wait(n + 1, seconds))
            if m == n:
                return
            n = m

    def watched(self, w: Any, state: TcpState, what: str, timeout: Optional[float] = None) -> None:
        """Wait until the sampler *w* has recorded *state*."""
        _wait(lambda: any(s == int(state) for _t, s, _v in w.transitions()),
              self.left(timeout), what)

    # --------------------------------------------------------- the result

    def finish(self, name: str, description: str) -> Recording:
        """Stop the samplers and the capture and make the Recording."""
        for w in self.watchers:
            w.stop()
        self.cap.stop()
        stats = dict(self.cap.stats())
        stats.pop("error", None)
        start = self.start_ns

        def rel(obs: list[tuple[int, TcpState, str]]) -> list[tuple[float, TcpState, str]]:
            return [(max(0.0, (t - start) / 1e9), st, by) for t, st, by in obs]

        def observed(w: Any, first: tuple[int, TcpState],
                     extra: list[tuple[int, TcpState, str]]) -> list[tuple[int, TcpState, str]]:
            obs = clean_observed([(int(t), int(s), bool(v)) for t, s, v in w.transitions()],
                                 tuple_watch=True)
            if not obs or obs[0][1] is not first[1]:
                obs.insert(0, (first[0], first[1], "TCP_INFO"))
            out: list[tuple[int, TcpState, str]] = []
            for o in sorted(obs + extra, key=lambda o: o[0]):
                if not out or out[-1][1] is not o[1]:     # a repeat is no change of state
                    out.append(o)
            return out

        client_obs = observed(self.cw, self.client_initial, self.extra[self.client_addr])
        server_obs = observed(self.sw, self.server_initial, self.extra[self.server])
        st0 = self.server_initial[1]
        cli, srv = self.client_addr, self.server
        return Recording(
            name=name, description=description,
            segments=segments_from_raw(self.cap.segments(), start),
            observed={(cli, srv): rel(client_obs), (srv, cli): rel(server_obs)},
            names={cli: "client", srv: "server"},
            initial={cli: TcpState.CLOSED, srv: st0},
            lost=self.lost, notes=self.notes, ports=(srv[1],), framing=_FRAMING,
            stats=stats, duration=max(0, int(stats["end_ns"]) - start) / 1e9)

    def release(self) -> None:
        """Close everything (aborting: nothing lingers but TIME_WAITs)."""
        for w in self.watchers:
            w.stop()
        if self.cap is not None:
            self.cap.stop()
        for c in self.conns:
            try:
                c.abort()
            except OSError:
                pass
        for s in (getattr(self, "client", None), self.bound):
            if s is not None:
                s.close()
        if self.listener is not None:
            self.listener.close()


# --------------------------------------------------------------------------
# Socket filters (CAP_NET_ADMIN: the helper has it over its own namespace)


def _attach(conn: Connection, code: Sequence[tuple[int, int, int, int]]) -> None:
    from .lab._netns import _sock_fprog

    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _sock_fprog(code))


def _detach(conn: Connection) -> None:
    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        s.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)


# A TCP socket filter sees the segment from its TCP header on.
_DROP_FIN = [
    (0x30, 0, 0, 13),           # ldb [13]       flags
    (0x45, 0, 1, 0x01),         # jset #FIN, drop, accept
    (0x06, 0, 0, 0),            # drop
    (0x06, 0, 0, 0xFFFFFFFF),   # accept
]
_DROP_PURE_ACK = [
    (0x30, 0, 0, 13),           # ldb [13]       flags
    (0x54, 0, 0, 0x3F),         # and #0x3f      (not ECE/CWR)
    (0x15, 0, 6, 0x10),         # jeq #ACK, next, accept
    (0x30, 0, 0, 12),           # ldb [12]       data offset << 4
    (0x74, 0, 0, 2),            # rsh #2
    (0x54, 0, 0, 0x3C),         # and #0x3c      -> header length
    (0x07, 0, 0, 0),            # tax
    (0x80, 0, 0, 0),            # ld len         header + payload
    (0x1C, 0, 0, 0),            # sub x          -> payload length
    (0x15, 0, 1, 0),            # jeq #0, drop, accept
    (0x06, 0, 0, 0),            # drop
    (0x06, 0, 0, 0xFFFFFFFF),   # accept
]


def _raw_flags(raw: tuple[Any, ...]) -> TcpFlags:
    return TcpFlags(int(raw[8]))


def _from(raw: tuple[Any, ...], addr: Address) -> bool:
    return (str(raw[2]), int(raw[3])) == addr


# --------------------------------------------------------------------------
# The scenarios: each plays its part on a _Stage and returns a problem
# (the kernel did not do what the scenario is about this time) or None.


def _sc_handshake(st: _Stage) -> Optional[str]:
    st.open()
    st.quiet()
    return None


def _client_closes(st: _Stage) -> tuple[Connection, Connection]:
    """Open, then the client closes (FIN); returns once the server has
    ACKed the FIN on its own (its delayed ACK): it is in CLOSE_WAIT."""
    cli, srv = st.open()
    st.quiet()
    cli.close()                                   # FIN
    st.wait_segment(lambda r: _from(r, st.server) and _raw_flags(r) == TcpFlags.ACK
                    and int(r[10]) == 0, "the server's ACK of the FIN")
    return cli, srv


def _sc_close(st: _Stage) -> Optional[str]:
    _cli, srv = _client_closes(st)
    time.sleep(0.05)                              # the passive side takes its time
    srv.close()                                   # its own FIN, separate
    st.watched(st.cw, TcpState.TIME_WAIT, "the client's TIME_WAIT")
    st.watched(st.sw, TcpState.CLOSED, "the server's CLOSED")
    st.quiet()
    return None


def _sc_close_combined(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    st.quiet()
    fd = srv.fileno()
    cli.close()                                   # FIN
    _wait(lambda: fd_state(fd) is TcpState.CLOSE_WAIT, st.left(), "the server's CLOSE_WAIT")
    srv.close()                                   # at once: the ACK is still delayed
    st.watched(st.cw, TcpState.TIME_WAIT, "the client's TIME_WAIT")
    st.quiet()
    return None


def _check_combined(rec: Recording) -> Optional[str]:
    server = [s for s in rec.segments if rec.connections[0].addresses[1] == s.src
              and TcpFlags.SYN not in s.flags]
    if not server or server[0].flags != TcpFlags.FIN | TcpFlags.ACK:
        return "the server's ACK left before its close (a slow wake-up): not piggybacked"
    return None


def _sc_simultaneous_close(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    st.quiet()
    # On loopback a segment arrives while its sender is still in the
    # syscall, so two FINs never cross by themselves.  Drop both first FINs
    # on arrival; sent in the same kernel tick, their retransmissions leave
    # from the same timer run, both before either is received: they cross.
    _attach(cli, _DROP_FIN)
    _attach(srv, _DROP_FIN)
    start = int(st.cap.stats()["kept"])
    tick = time.clock_gettime_ns(_CLOCK_MONOTONIC_COARSE)
    limit = time.monotonic() + 0.05
    while time.clock_gettime_ns(_CLOCK_MONOTONIC_COARSE) == tick and time.monotonic() < limit:
        pass
    cli.shutdown("write")
    srv.shutdown("write")
    _detach(cli)
    _detach(srv)
    for who, addr in (("client", st.client_addr), ("server", st.server)):
        def first_fin(r: tuple[Any, ...], a: Address = addr) -> bool:
            return _from(r, a) and TcpFlags.FIN in _raw_flags(r)

        k = st.wait_segment(first_fin, f"the {who}'s first FIN", start=start)
        st.lost.append(k)
        st.notes[k] = "by the scenario's filter, so that the FINs cross"
    st.watched(st.cw, TcpState.TIME_WAIT, "the client's TIME_WAIT")
    st.watched(st.sw, TcpState.TIME_WAIT, "the server's TIME_WAIT")
    st.quiet()
    return None


def _check_crossed(rec: Recording) -> Optional[str]:
    if not all(any(s.state is TcpState.CLOSING for s in rec.states[end])
               for end in ("client", "server")):
        return "the retransmitted FINs did not cross (different timer ticks)"
    return None


def _sc_half_close(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    cli.send(b"request")
    cli.shutdown("write")                         # FIN: no more from the client
    got = srv.recv(timeout=st.left())
    if got != b"request":
        raise Error(errno.EPROTO, f"conversation: the server read {got!r}, not b'request'")
    try:
        srv.recv(timeout=st.left())
    except ConnectionClosed:
        pass
    srv.send(b"reply")                            # the other direction still works
    srv.send(b"more, after your FIN")
    cli.recv(timeout=st.left())
    cli.recv(timeout=st.left())
    st.quiet()
    srv.close()
    st.watched(st.cw, TcpState.TIME_WAIT, "the client's TIME_WAIT")
    st.quiet()
    return None


def _sc_abort(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    cli.send(b"hello")
    srv.recv(timeout=st.left())
    st.quiet()
    cli.abort()                                   # SO_LINGER {1, 0}: RST
    st.watched(st.sw, TcpState.CLOSED, "the server's CLOSED")
    st.quiet()
    return None


def _sc_lost_last_ack(st: _Stage) -> Optional[str]:
    _cli, srv = _client_closes(st)
    fd = srv.fileno()
    _attach(srv, _DROP_PURE_ACK)                  # the next pure ACK will not arrive
    start = int(st.cap.stats()["kept"])
    srv.shutdown("write")                         # FIN; the descriptor stays ours
    k = st.wait_segment(lambda r: _from(r, st.client_addr) and _raw_flags(r) == TcpFlags.ACK,
                        "the client's final ACK", start=start)
    _detach(srv)                                  # once only
    st.lost.append(k)
    st.notes[k] = "by the scenario's filter: the server never sees it"
    _wait(lambda: fd_state(fd) is TcpState.CLOSED, st.left(10.0),
          "the server's CLOSED after its retransmitted FIN")
    st.quiet()
    return None


def _exchange(st: _Stage, cli: Connection, srv: Connection, msg: bytes) -> None:
    cli.send(msg)
    srv.send(srv.recv(timeout=st.left()).upper())
    cli.recv(timeout=st.left())


def _close_both(st: _Stage, cli: Connection, srv: Connection) -> None:
    cli.close()
    try:
        srv.recv(timeout=st.left())
    except ConnectionClosed:
        pass
    srv.close()
    st.watched(st.cw, TcpState.TIME_WAIT, "the client's TIME_WAIT")
    st.quiet()


def _sc_short(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    _exchange(st, cli, srv, b"hello")
    _close_both(st, cli, srv)
    return None


def _sc_long(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    for i in range(3):
        _exchange(st, cli, srv, b"hello %d" % i)
        time.sleep(0.25)                          # idle: the reactor beats
    _close_both(st, cli, srv)
    return None


def _sc_syn_to_closed_port(st: _Stage) -> Optional[str]:
    st.client.settimeout(st.left())
    err = st.client.connect_ex(st.server)
    if err != errno.ECONNREFUSED:
        return f"connect() gave {os.strerror(err)}, not ECONNREFUSED"
    # the descriptor is still ours: TCP_INFO shows the RST's effect
    st.extra[st.client_addr].append((time.monotonic_ns(), fd_state(st.client.fileno()),
                                     "TCP_INFO"))
    st.quiet()
    return None


def _sc_keepalive(st: _Stage) -> Optional[str]:
    cli, srv = st.open()
    st.quiet()
    snd_nxt = None
    for raw in st.segments():
        if _from(raw, st.client_addr):
            snd_nxt = int(raw[6]) + int(raw[10]) + (1 if TcpFlags.SYN in _raw_flags(raw) else 0)
    if snd_nxt is None:
        raise Error(errno.EPROTO, "conversation: no segment of the client was captured")
    probe = (snd_nxt - 1) & 0xFFFFFFFF
    k = int(st.cap.stats()["kept"])
    for _ in range(2):                            # two probes, one second apart
        k = st.wait_segment(lambda r: _from(r, st.client_addr) and int(r[6]) == probe,
                            "a keepalive probe", start=k) + 1
    st.quiet()
    cli.close()
    srv.close()
    st.watched(st.cw, TcpState.TIME_WAIT, "the client's TIME_WAIT")
    st.quiet()
    return None


@dataclass(frozen=True)
class Scenario:
    """A conversation :func:`conversation` can play: its name, a one-line
    description, and what it needs.

    Example::

        >>> SCENARIOS["abort"].description.split(":")[0]
        'abort()'
    """

    name: str
    description: str
    play: Callable[[_Stage], Optional[str]]
    listening: bool = True
    heartbeat: Optional[Heartbeat] = None
    keepalive: Optional[Keepalive] = None
    check: Optional[Callable[[Recording], Optional[str]]] = None
    attempts: int = 1


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("handshake", "the three-way handshake: SYN, SYN+ACK, ACK; "
             "each SYN takes one sequence number, so ack = seq + 1", _sc_handshake),
    Scenario("close", "the four-way close: FIN, ACK, then (the passive side closes after a "
             "pause) FIN, ACK; the side that closed first waits in TIME_WAIT", _sc_close),
    Scenario("close-combined", "the passive side closes at once: its delayed ACK rides on "
             "its FIN (FIN+ACK), so the close takes three segments, not four",
             _sc_close_combined, check=_check_combined, attempts=3),
    Scenario("simultaneous-close", "both sides close at once: the FINs cross, each side "
             "goes through CLOSING to TIME_WAIT", _sc_simultaneous_close,
             check=_check_crossed, attempts=3),
    Scenario("half-close", "the client shuts down its sending side (FIN) and keeps "
             "reading: the server's frames still flow, then it closes", _sc_half_close),
    Scenario("abort", "abort(): SO_LINGER 0 and close() send RST instead of FIN; "
             "both ends are CLOSED at once, no TIME_WAIT", _sc_abort),
    Scenario("lost-last-ack", "the final ACK is lost once: the server retransmits its FIN "
             "after the RTO and the client, in TIME_WAIT, answers again: why TIME_WAIT "
             "lasts 2 MSL", _sc_lost_last_ack),
    Scenario("short", "a short connection: handshake, one framed request and reply, "
             "close (what sk.call does for every message)", _sc_short),
    Scenario("long", "a long connection: one handshake, three framed exchanges with "
             "heartbeats between them, one close",
             _sc_long, heartbeat=Heartbeat(interval=0.1)),
    Scenario("syn-to-closed-port", "connect() to a port where nothing listens: the "
             "kernel answers the SYN with RST+ACK (ECONNREFUSED)",
             _sc_syn_to_closed_port, listening=False),
    Scenario("keepalive", "an idle connection with SO_KEEPALIVE (1 s idle, 1 s interval): "
             "the kernel probes with seq-1 and no data, the peer ACKs",
             _sc_keepalive, keepalive=Keepalive(idle=1, interval=1, count=5)),
)}


class ConversationTable(list[tuple[str, str]]):
    """``[(name, description), ...]`` of the scenarios, printable as a
    table.  Made by :func:`conversations`.

    Example::

        >>> t = conversations()
        >>> t[0][0], str(t).splitlines()[0].split()
        ('handshake', ['name', 'shows'])
    """

    __slots__ = ()

    def __str__(self) -> str:
        return text_table(("name", "shows"), list(self))

    def _repr_html_(self) -> str:
        return html_table(("name", "shows"), list(self))


def conversations() -> ConversationTable:
    """The scenarios :func:`conversation` plays, with what each shows.

    Example::

        >>> import pysockkit as sk
        >>> [name for name, _ in sk.lab.conversations()][:3]
        ['handshake', 'close', 'close-combined']
    """
    return ConversationTable((s.name, s.description) for s in SCENARIOS.values())


def _scenario(name: Any) -> Scenario:
    if not isinstance(name, str):
        raise TypeError(f"a conversation's name must be a str, not {type(name).__name__}")
    sc = SCENARIOS.get(name.strip().lower().replace("_", "-"))
    if sc is None:
        raise ValueError(f"unknown conversation {name!r}; the scenarios are: "
                         + ", ".join(SCENARIOS))
    return sc


def run_scenario(name: str, family: FamilyLike = "ipv4", timeout: float = 20.0) -> Recording:
    """Play scenario *name* here, in this network namespace, and return
    its recording.  Needs CAP_NET_RAW (the capture) and, for
    ``simultaneous-close`` and ``lost-last-ack``, CAP_NET_ADMIN (socket
    filters on TCP sockets); :func:`conversation` runs this in a private
    namespace where the helper has both.  A scenario whose point the
    kernel did not show this time (two FINs that did not cross) is played
    again, up to its attempts; then the recording says what happened.

    Example::

        >>> rec = run_scenario("handshake")          # doctest: +SKIP
    """
    sc = _scenario(name)
    fam = parse_family(family)
    problem: Optional[str] = None
    rec: Optional[Recording] = None
    for _attempt in range(sc.attempts):
        st = _Stage(fam, listening=sc.listening, heartbeat=sc.heartbeat,
                    client_keepalive=sc.keepalive, timeout=timeout)
        try:
            problem = sc.play(st)
            rec = st.finish(sc.name, sc.description)
        finally:
            st.release()
        if problem is None and sc.check is not None:
            problem = sc.check(rec)
        if problem is None:
            break
    assert rec is not None
    if problem is not None:
        rec.description += f" [this time {problem}]"
    return rec


def conversation(name: str, *, family: FamilyLike = "ipv4", timeout: float = 30.0,
                 unshare: str = "unshare") -> Recording:
    """Play the scenario *name* on a private loopback and return the
    :class:`~pysockkit.Recording`: every segment, both ends' states.

    The scenario runs in a helper process in a private user and network
    namespace (``unshare -Urn``), so it needs no privilege, only
    unprivileged user namespaces; no other traffic shares its loopback.
    :func:`conversations` lists the names: ``handshake``, ``close``,
    ``close-combined``, ``simultaneous-close``, ``half-close``, ``abort``,
    ``lost-last-ack``, ``short``, ``long``, ``syn-to-closed-port``,
    ``keepalive``.  *family* is ``"ipv4"`` or ``"ipv6"``; *timeout* bounds
    the scenario (seconds); *unshare* is the command used.

    Raises ValueError (listing the names) for an unknown name,
    :class:`pysockkit.lab.LabUnavailable` where the namespace cannot be
    made (no ``unshare``, or user namespaces disabled: the rest of
    pysockkit keeps working), :class:`pysockkit.Timeout` if the scenario
    does not finish in time.

    Example::

        >>> import pysockkit as sk
        >>> rec = sk.lab.conversation("handshake")          # doctest: +SKIP
        >>> [str(s.flags) for s in rec.segments]            # doctest: +SKIP
        ['SYN', 'SYN|ACK', 'ACK']
        >>> rec.segments[1].rack                            # doctest: +SKIP
        1
    """
    from .lab._netns import _netns_helper
    from .lab.recipes import LabUnavailable

    sc = _scenario(name)
    fam = parse_family(family)
    limit = check_timeout(timeout)
    if limit is None or limit == 0:
        raise ValueError(f"timeout must be a number of seconds > 0 (the scenario takes a "
                         f"moment), not {timeout!r}")
    timeout = limit
    what = (f"sk.lab.conversation({sc.name!r}) needs `unshare -Urn` (util-linux, with "
            f"unprivileged user namespaces enabled)")
    res, msg, _fds = _netns_helper("pysockkit._conversation:_helper_main",
                                   [sc.name, str(int(fam)), repr(float(timeout))],
                                   what, float(timeout), unshare)
    try:
        if msg.startswith(b"{\"error\""):
            report = json.loads(msg)
            if report.get("kind") == "timeout":
                raise Timeout(report["error"])
            if report.get("kind") == "unavailable":
                raise LabUnavailable(int(report.get("errno") or errno.EPERM),
                                     f"{what}: {report['error']}")
            raise Error(int(report.get("errno") or errno.EPROTO),
                        f"sk.lab.conversation({sc.name!r}) failed in its namespace: "
                        f"{report['error']}")
        return Recording._from_json(msg.decode())
    finally:
        res.close()


def _helper_main() -> None:
    """Entry point of the ``unshare -Urn`` helper (argv: channel fd, name,
    family, timeout): bring lo up, play the scenario, send the recording
    back as JSON (in chunks), exit."""
    from .lab._netns import _helper_start, _send_report

    name, fam, timeout = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    chan, fail, up = _helper_start()
    try:
        if not up:
            return
        host = loopback_host(fam)
        _wait(lambda: _bindable(fam, host), 2.0, f"{host} on lo")
        rec = run_scenario(name, fam, timeout)
        _send_report(chan, rec._to_json().encode())
    except Timeout as exc:
        fail("timeout", str(exc))
    except PermissionError as exc:
        fail("unavailable", f"{type(exc).__name__}: {exc}", exc.errno or 0)
    except Exception as exc:  # report anything else; the parent raises it
        fail("error", f"{type(exc).__name__}: {exc}", getattr(exc, "errno", 0) or 0)
    finally:
        chan.close()


def _bindable(fam: int, host: str) -> bool:
    """::1 appears on lo a moment after it is up."""
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True
