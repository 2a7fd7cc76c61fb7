"""Record a TCP connection's state transitions as they happen.

:func:`watch` starts a sampler thread, written in C and running without the
GIL, that reads the connection's TCP state every *interval* seconds (1 ms by
default: 1 kHz; 10 kHz works) and records each change with a monotonic
timestamp.  The result is a :class:`StateTrace`: a list of
``(seconds since start, TcpState)``, a readable timeline, a state diagram
with the path drawn on it in a notebook, and a plot.

How it follows a connection all the way to the end: while the application
holds the socket, the sampler reads ``getsockopt(TCP_INFO)`` on its
descriptor (never a ``dup()`` of it: a duplicate would keep the socket
open and change what ``close()`` does).  Every reading is checked against
the socket's cookie (``SO_COOKIE``), so a descriptor number reused by
another socket is never mistaken for the watched one.  Once the
application closes it, the sampler follows the same socket by its 4-tuple
and cookie through sock_diag, so FIN_WAIT_2, LAST_ACK and TIME_WAIT of an
orphaned socket still show up, and CLOSED is recorded when the kernel
forgets it.  A socket that was shut down and kept reads CLOSE through its
descriptor while its TIME_WAIT lives on; the sampler asks sock_diag then
too and records TIME_WAIT.

Leaving a ``with watch(conn) as trace:`` block follows a connection whose
close is under way (FIN_WAIT_1, FIN_WAIT_2, CLOSING or LAST_ACK, as after
``conn.close()`` in the block) until TIME_WAIT or CLOSED is recorded, at
most *follow* seconds (2 by default), then stops the sampler; a connection
nobody is closing stops it at once.  So ``with sk.watch(conn) as trace:
conn.close()`` records the whole active close.  A state too brief to be
sampled (FIN_WAIT_1 lasts microseconds on loopback) is shown, marked
inferred, in the timeline and dashed in the diagram.

Memory is bounded: transitions go into a ring of *max_transitions*
(default 4096; 16 bytes each) and rtt/cwnd samples into a ring of
*max_samples* (default 65536; 40 bytes each, about 2.5 MiB, allocated only
with ``sample_info=True``).  A full ring drops its oldest records and
counts them (:attr:`StateTrace.dropped`).

Example::

    >>> import socket, time, pysockkit as sk
    >>> from pysockkit._watch import watch
    >>> srv = socket.create_server(("127.0.0.1", 0))
    >>> cli = socket.create_connection(srv.getsockname())
    >>> peer, _ = srv.accept()
    >>> with watch(peer) as trace:
    ...     cli.close()                    # the peer sees our FIN
    ...     _ = trace.wait_for("CLOSE_WAIT", timeout=2)
    ...     peer.close()                   # now the peer closes too
    ...     _ = trace.wait_for("CLOSED", timeout=2)
    >>> [s.name for s in trace.states]     # doctest: +SKIP
    ['ESTABLISHED', 'CLOSE_WAIT', 'CLOSED']
    >>> print(trace)                       # doctest: +SKIP
      0.000 ms  ESTABLISHED
      0.913 ms  CLOSE_WAIT
      1.925 ms  CLOSED
    >>> srv.close()
"""

from __future__ import annotations

import html
import importlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterable, Optional, Union

from . import _core
from ._diagram import _NODES, StateDiagram, _legs, state_diagram_svg
from ._display import Markup, html_table
from ._enums import StateLike, TcpState, as_states, kernel_state
from ._net import check_timeout, format_address

__all__ = ["watch", "StateTrace", "InfoSample"]

# The Watcher type (csrc/binding/watch.c) is used untyped here: its
# records are plain tuples and dicts, checked at this boundary.
_native: Any = _core

DEFAULT_MAX_TRANSITIONS = int(_native.WATCH_DEFAULT_TRANSITIONS)
DEFAULT_MAX_SAMPLES = int(_native.WATCH_DEFAULT_SAMPLES)
_MAX_RING = int(_native.WATCH_MAX_RING)
DEFAULT_FOLLOW = 2.0  # seconds a with block follows a closing connection
_NOT_CLOSING, _CLOSED = 0, 1  # Watcher.follow (csrc/core/watch.h sk_watch_follow)


@dataclass(frozen=True, slots=True)
class InfoSample:
    """One rtt/cwnd sample of a watched connection (``watch(...,
    sample_info=True)``).  Kept only when a value changed since the
    previous sample.  ``t`` is seconds since the watch started.

    Example::

        >>> s = InfoSample(0.0012, TcpState.ESTABLISHED, 45, 22, 10, 2147483647, 0, 0)
        >>> s.rtt_us, s.cwnd_segs
        (45, 10)
    """

    t: float
    state: TcpState
    rtt_us: int
    rttvar_us: int
    cwnd_segs: int
    ssthresh_segs: int
    unacked_segs: int
    total_retrans: int


def _ip(host: Any) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    return ipaddress.ip_address(str(host).strip("[]"))


def _tuple_arg(local: Any, remote: Any) -> tuple[int, str, int, str, int]:
    lh, rh = _ip(local[0]), _ip(remote[0])
    if lh.version != rh.version:
        # a dual-stack socket: both as IPv6, the IPv4 side mapped
        lh = lh if lh.version == 6 else ipaddress.IPv6Address("::ffff:" + str(lh))
        rh = rh if rh.version == 6 else ipaddress.IPv6Address("::ffff:" + str(rh))
    fam = socket.AF_INET6 if lh.version == 6 else socket.AF_INET
    lp, rp = int(local[1]), int(remote[1])
    for p in (lp, rp):
        if not 0 <= p <= 65535:
            raise ValueError(f"port out of range: {p}")
    return (int(fam), str(lh), lp, str(rh), rp)


def _tup5(t: Any) -> Optional[tuple[int, str, int, str, int]]:
    if t is None:
        return None
    fam, lh, lp, rh, rp = t
    return (int(fam), str(lh), int(lp), str(rh), int(rp))


def _missed(a: TcpState, b: TcpState) -> list[TcpState]:
    """The states a connection went through between two samples that saw
    a and then b, when one short way along the diagram explains the jump
    (ESTABLISHED -> FIN_WAIT_2: FIN_WAIT_1); else none."""
    legs, _ = _legs([a, b])
    if len(legs) == 1 and legs[0][1] == "inferred":
        return [_NODES[n][0] for n in legs[0][0][1:-1]]
    return []


class StateTrace:
    """The state transitions of one TCP connection, recorded by :func:`watch`.

    While it runs a C thread samples the connection; every attribute reads
    the latest records.  Use it as a context manager or call :meth:`stop`.
    Leaving the ``with`` block (without an exception) first follows a
    closing connection to the end of its close (:meth:`follow`, bounded by
    the ``follow`` seconds given to :func:`watch`), then stops the sampler.
    The sampler also ends by itself once the socket is gone for good
    (closed by the application and forgotten by the kernel).

    - ``transitions``: ``[(t, TcpState), ...]``, t in seconds since the
      watch started (monotonic clock); the first entry is the state at
      start.
    - ``states``: just the states; ``state``: the latest one.
    - ``samples`` / ``rate_hz``: how many times the state was read, and how
      often per second.
    - ``info``: rtt/cwnd samples (``sample_info=True``).
    - ``str(trace)``: a timeline; in Jupyter the state diagram with the
      path drawn over it and the timeline beside it.

    Example::

        >>> import socket, pysockkit as sk
        >>> from pysockkit._watch import watch
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> cli = socket.create_connection(srv.getsockname())
        >>> trace = watch(cli)
        >>> trace.state
        <TcpState.ESTABLISHED: 1>
        >>> trace.transitions[0]                    # doctest: +SKIP
        (3.1e-05, <TcpState.ESTABLISHED: 1>)
        >>> trace.stop(); trace.stop()              # idempotent
        >>> trace.running
        False
        >>> cli.close(); srv.close()
    """

    def __init__(self, watcher: Any, description: str,
                 follow: Optional[float] = DEFAULT_FOLLOW) -> None:
        """Made by :func:`watch`; not meant to be called directly."""
        self._w = watcher
        self._description = description
        self._follow = follow
        st = watcher.stats()
        self._start_ns: int = st["start_ns"]
        self._tuple = _tup5(st["tuple"])

    # ---------------------------------------------------------------- life

    def stop(self) -> None:
        """Stop the sampler thread and wait for it (a few microseconds).
        Calling it again does nothing.  The records stay readable.

        Example::

            >>> trace.stop()          # doctest: +SKIP
        """
        self._w.stop()

    def follow(self, timeout: Optional[float] = DEFAULT_FOLLOW) -> bool:
        """Follow a closing connection to the end of its close: wait until
        TIME_WAIT or CLOSED is recorded (or the sampler ended), at most
        *timeout* seconds (None: no limit; an orphan in FIN_WAIT_2 lasts
        up to the kernel's ``tcp_fin_timeout``, 60 s).  Returns True then,
        False at the timeout.  A connection that nobody is closing (its
        state is not FIN_WAIT_1, FIN_WAIT_2, CLOSING or LAST_ACK at the
        first sample after the call) returns False at once.  Leaving a
        ``with`` block calls it with the ``follow`` given to :func:`watch`.
        Ctrl-C interrupts the wait.

        Example::

            >>> trace = sk.watch(conn)           # doctest: +SKIP
            >>> conn.close()                     # doctest: +SKIP
            >>> trace.follow(timeout=5.0)        # doctest: +SKIP
            True
            >>> trace.states[-1]                 # doctest: +SKIP
            <TcpState.TIME_WAIT: 6>
        """
        timeout = check_timeout(timeout)
        return int(self._w.follow(time.monotonic_ns(), timeout)) == _CLOSED

    def __enter__(self) -> StateTrace:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            if exc_type is None and self._follow != 0:
                self.follow(self._follow)
        finally:
            self.stop()

    @property
    def running(self) -> bool:
        """True while the sampler thread runs.

        Example::

            >>> trace.running           # doctest: +SKIP
            True
        """
        return bool(self._w.stats()["running"])

    @property
    def finished(self) -> bool:
        """True once the sampler ended by itself because the socket is gone
        for good (closed by the application and no longer known to the
        kernel; recorded as CLOSED).

        Example::

            >>> trace.finished          # doctest: +SKIP
            False
        """
        return bool(self._w.stats()["finished"])

    @property
    def error(self) -> Optional[BaseException]:
        """The error that ended the sampler (a failed sock_diag lookup), or
        None.

        Example::

            >>> trace.error is None     # doctest: +SKIP
            True
        """
        err = self._w.stats()["error"]
        return err if isinstance(err, BaseException) else None

    # ------------------------------------------------------------- records

    @property
    def transitions(self) -> list[tuple[float, TcpState]]:
        """``[(t, state), ...]``: each state change, t in seconds since the
        watch started (monotonic), oldest first.

        Example::

            >>> [s.name for _, s in trace.transitions]   # doctest: +SKIP
            ['ESTABLISHED', 'FIN_WAIT_1', 'FIN_WAIT_2', 'TIME_WAIT']
        """
        t0 = self._start_ns
        return [((t - t0) / 1e9, kernel_state(s)) for t, s, _via in self._w.transitions()]

    @property
    def states(self) -> list[TcpState]:
        """The states in the order they were seen.

        Example::

            >>> trace.states                # doctest: +SKIP
            [<TcpState.ESTABLISHED: 1>, <TcpState.CLOSE_WAIT: 8>]
        """
        return [s for _, s in self.transitions]

    @property
    def state(self) -> Optional[TcpState]:
        """The latest state seen.

        Example::

            >>> trace.state                 # doctest: +SKIP
            <TcpState.ESTABLISHED: 1>
        """
        s = self._w.stats()["state"]
        return None if s is None else kernel_state(s)

    @property
    def samples(self) -> int:
        """How many times the sampler read the state so far.

        Example::

            >>> trace.samples               # doctest: +SKIP
            1002
        """
        return int(self._w.stats()["samples"])

    @property
    def rate_hz(self) -> float:
        """Samples per second, measured (samples between the first and the
        latest one, over that time); 0.0 until there are two samples.

        Example::

            >>> round(trace.rate_hz, -2)    # doctest: +SKIP
            1000.0
        """
        st = self._w.stats()
        span = st["last_ns"] - st["first_ns"]
        if st["samples"] < 2 or span <= 0:
            return 0.0
        return float((st["samples"] - 1) / (span / 1e9))

    @property
    def duration(self) -> float:
        """Seconds from the start to the latest sample.

        Example::

            >>> trace.duration              # doctest: +SKIP
            1.0011
        """
        st = self._w.stats()
        return float(max(0, st["last_ns"] - st["start_ns"]) / 1e9)

    @property
    def dropped(self) -> int:
        """Transitions dropped because the ring was full (oldest first).

        Example::

            >>> trace.dropped               # doctest: +SKIP
            0
        """
        return int(self._w.stats()["transitions_dropped"])

    @property
    def info_dropped(self) -> int:
        """Info samples dropped because their ring was full.

        Example::

            >>> trace.info_dropped          # doctest: +SKIP
            0
        """
        return int(self._w.stats()["info_dropped"])

    @property
    def info(self) -> list[InfoSample]:
        """rtt/cwnd samples (only with ``watch(..., sample_info=True)``), one
        per change of any value, oldest first.  TIME_WAIT sockets have no
        tcp_info, so none are taken then.

        Example::

            >>> [s.rtt_us for s in trace.info][:3]   # doctest: +SKIP
            [52, 48, 47]
        """
        t0 = self._start_ns
        return [
            InfoSample((t - t0) / 1e9, kernel_state(s), rtt, rttvar, cwnd, ssth, unacked, retr)
            for t, s, rtt, rttvar, cwnd, ssth, unacked, retr in self._w.samples()
        ]

    @property
    def closed_at(self) -> Optional[float]:
        """When the sampler found the descriptor closed (or reused) and went
        on through sock_diag, in seconds since start; None if it has not
        (or a 4-tuple is watched).  Accurate to one interval.

        Example::

            >>> trace.closed_at             # doctest: +SKIP
            0.0521
        """
        h = self._w.stats()["handover_ns"]
        return None if h is None else (h - self._start_ns) / 1e9

    @property
    def local_address(self) -> Optional[tuple[str, int]]:
        """(host, port) of the watched socket, once known.

        Example::

            >>> trace.local_address         # doctest: +SKIP
            ('127.0.0.1', 40112)
        """
        tup = self._current_tuple()
        return None if tup is None else (tup[1], tup[2])

    @property
    def remote_address(self) -> Optional[tuple[str, int]]:
        """(host, port) of its peer, once known.

        Example::

            >>> trace.remote_address        # doctest: +SKIP
            ('127.0.0.1', 9000)
        """
        tup = self._current_tuple()
        return None if tup is None else (tup[3], tup[4])

    def _current_tuple(self) -> Optional[tuple[int, str, int, str, int]]:
        if self._tuple is None:
            self._tuple = _tup5(self._w.stats()["tuple"])
        return self._tuple

    def stats(self) -> dict[str, Any]:
        """The sampler's raw counters: ``samples``, ``lookups`` (sock_diag
        round trips), ``transitions``/``transitions_dropped``,
        ``info_samples``/``info_dropped``, ``cookie``, ``fd_phase``,
        ``running``, ``finished``, ``error`` and the monotonic
        ``start_ns``/``first_ns``/``last_ns``.

        Example::

            >>> sorted(trace.stats())[:3]   # doctest: +SKIP
            ['cookie', 'error', 'fd_phase']
        """
        return dict(self._w.stats())

    def wait_for(self, state: Union[StateLike, Iterable[StateLike]],
                 timeout: Optional[float] = 1.0) -> bool:
        """Wait until one of *state* (a state, a name, or several) has been
        recorded -- at any time since the start -- or *timeout* seconds
        passed (None: no limit).  Returns whether it was.  Polls every
        millisecond; returns early, False, if the sampler stopped.

        Example::

            >>> trace.wait_for("TIME_WAIT", timeout=2.0)     # doctest: +SKIP
            True
        """
        wanted = as_states(state, "wait_for()")
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if wanted.intersection(self.states):
                return True
            if not self._w.stats()["running"]:
                return bool(wanted.intersection(self.states))
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    # ------------------------------------------------------------- display

    def _title(self) -> str:
        tup = self._current_tuple()
        if tup is None:
            return self._description
        return f"{format_address(tup[1:3])} → {format_address(tup[3:5])}"

    def __str__(self) -> str:
        tr = self.transitions
        closed = self.closed_at
        rows: list[tuple[float, int, str]] = [(t, 2, s.name) for t, s in tr]
        for (_, a), (t, b) in zip(tr, tr[1:]):
            rows += [(t, 1, f"· {m.name} (too brief to be sampled: inferred)")
                     for m in _missed(a, b)]
        if closed is not None:
            rows.append((closed, 0, "· descriptor closed: following the socket via sock_diag"))
        rows.sort(key=lambda r: (r[0], r[1]))  # stable: missed states keep their order
        width = max([7] + [len(f"{t * 1e3:.3f}") for t, _, _ in rows])
        lines = [f"  {t * 1e3:{width}.3f} ms  {name}" for t, _, name in rows]
        if self.dropped:
            lines.insert(0, f"  ({self.dropped} earlier transitions dropped: ring full)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        st = self._w.stats()
        path = " → ".join(s.name for s in self.states) or "nothing yet"
        status = "running" if st["running"] else ("finished" if st["finished"] else "stopped")
        if st["error"] is not None:
            status = f"failed: {st['error']}"
        return (f"<StateTrace {self._title()}: {path}; {st['samples']} samples "
                f"at {self.rate_hz:.0f} Hz, {status}>")

    def diagram(self) -> StateDiagram:
        """The TCP state diagram with this trace's path drawn over it and
        its latest state highlighted.

        Example::

            >>> trace.diagram()         # doctest: +SKIP
            <StateDiagram current=TIME_WAIT path=[...]>
        """
        states = self.states
        return StateDiagram(states[-1] if states else None, states, self._title())

    def _repr_svg_(self) -> str:
        states = self.states
        return state_diagram_svg(states[-1] if states else None, states, title=self._title())

    def _repr_html_(self) -> str:
        rows = [(f"{t * 1e3:.3f} ms",
                 Markup(f"<b title='{html.escape(s.description)}'>{html.escape(s.name)}</b>"))
                for t, s in self.transitions]
        st = self._w.stats()
        status = "running" if st["running"] else ("finished" if st["finished"] else "stopped")
        closed = self.closed_at
        note = ("" if closed is None else
                f"<br>descriptor closed at {closed * 1e3:.3f} ms; followed via sock_diag since")
        return (
            "<div style='display:flex;gap:1.5em;align-items:flex-start'>"
            f"<div>{self._repr_svg_()}</div>"
            f"<div><b>{html.escape(self._title())}</b>"
            f"{html_table(('t', 'state'), rows, frozenset({0}))}"
            f"<small>{st['samples']} samples at {self.rate_hz:.0f} Hz, {status}"
            f"{note}</small></div></div>"
        )

    def plot(self, ax: Any = None) -> Any:
        """Plot the state over time (a step line, one row per state), and
        rtt and cwnd below it when they were sampled.  Needs matplotlib
        (``pip install 'pysockkit[plot]'``).  Draws into *ax* if given
        (state only), else into a new figure.  Returns the Figure.

        Example::

            >>> fig = trace.plot()            # doctest: +SKIP
            >>> fig.savefig("close.png")      # doctest: +SKIP
        """
        try:
            plt = importlib.import_module("matplotlib.pyplot")
        except ImportError as exc:
            raise ImportError(
                "StateTrace.plot() needs matplotlib: pip install 'pysockkit[plot]' "
                "(or pip install matplotlib)") from exc
        tr = self.transitions
        end = max(self.duration, tr[-1][0] if tr else 0.0)
        info = self.info
        if ax is None:
            rows = 2 if info else 1
            fig, axes = plt.subplots(rows, 1, sharex=True, squeeze=False,
                                     figsize=(8, 3 + 2.2 * (rows - 1)))
            ax = axes[0][0]
            info_ax = axes[1][0] if info else None
        else:
            fig = ax.figure
            info_ax = None
        order = [s for s in _PLOT_ORDER if s in {st for _, st in tr}]
        ys = {s: i for i, s in enumerate(order)}
        xs = [t * 1e3 for t, _ in tr] + [end * 1e3]
        yv = [ys[s] for _, s in tr]
        yv.append(yv[-1] if yv else 0)
        ax.step(xs, yv, where="post", color="#d9480f", linewidth=2)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([s.name for s in order])
        ax.set_ylim(max(0.5, len(order) - 0.5), -0.5)  # life order, top down
        ax.set_title(self._title())
        ax.grid(True, axis="x", alpha=0.3)
        if info_ax is not None:
            ts = [s.t * 1e3 for s in info] + [end * 1e3]
            rtts = [s.rtt_us for s in info]
            cwnds = [s.cwnd_segs for s in info]
            info_ax.step(ts, rtts + rtts[-1:], where="post", label="rtt (µs)",
                         color="#1c7ed6")
            info_ax.set_ylabel("rtt (µs)", color="#1c7ed6")
            cw = info_ax.twinx()
            cw.step(ts, cwnds + cwnds[-1:], where="post", label="cwnd (segments)",
                    color="#2b8a3e")
            cw.set_ylabel("cwnd (segments)", color="#2b8a3e")
            info_ax.grid(True, alpha=0.3)
            info_ax.set_xlabel("time since start (ms)")
        else:
            ax.set_xlabel("time since start (ms)")
        fig.tight_layout()
        return fig


# states top to bottom in a plot: the life of a connection
_PLOT_ORDER = (
    TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RCVD,
    TcpState.NEW_SYN_RECV, TcpState.ESTABLISHED, TcpState.FIN_WAIT_1,
    TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_2, TcpState.CLOSING,
    TcpState.LAST_ACK, TcpState.TIME_WAIT,
)


def watch(
    target: Any,
    interval: float = 0.001,
    *,
    follow: Optional[float] = DEFAULT_FOLLOW,
    sample_info: bool = False,
    max_transitions: int = DEFAULT_MAX_TRANSITIONS,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> StateTrace:
    """Record the state transitions of a TCP connection, with timestamps.

    *target* is what to watch:

    - a socket: a pysockkit ``Connection``, a stdlib ``socket.socket``,
      anything with ``fileno()``, or an int descriptor.  The descriptor is
      read while the application holds it (never dup'ed, so ``close()``
      still closes the connection); after ``close()`` the same socket is
      followed through sock_diag, so the orphan's FIN_WAIT_2/LAST_ACK/
      TIME_WAIT and the final CLOSED are recorded too;
    - a 4-tuple ``((local_host, local_port), (remote_host, remote_port))``
      as seen from the socket to watch (or a :class:`SocketEntry` from
      :func:`sockets`): followed through sock_diag only, including later
      connections that reuse the 4-tuple, until :meth:`StateTrace.stop`.

    Used as a context manager, leaving the block follows a connection
    whose close is under way until TIME_WAIT or CLOSED, at most *follow*
    seconds (None: no limit; 0: stop at once), so that::

        with sk.watch(conn) as trace:
            conn.close()
        print(trace)        # ESTABLISHED -> FIN_WAIT_1 [-> FIN_WAIT_2] -> TIME_WAIT

    records the whole close when the peer closes too (a server that closes
    on EOF).  A peer that closes at once sends its FIN with the (delayed)
    ACK of ours, so there is no FIN_WAIT_2; FIN_WAIT_1 then lasts about a
    millisecond and may show as inferred.  See :meth:`StateTrace.follow`.

    *interval* is the sampling period in seconds (1 ms: 1 kHz; at least
    20 µs).  The sampler is a C thread that never takes the GIL.  A state
    that lasts less than one interval may be missed; the diagram then
    shows it dashed.  With *sample_info* rtt, cwnd, ssthresh, unacked and
    retransmits are recorded too (:attr:`StateTrace.info`).  The rings
    hold *max_transitions* transitions and *max_samples* info samples at
    most (oldest dropped first, counted).

    Raises ``OSError`` if the descriptor is not a TCP socket, ValueError
    for a bad argument.

    Example::

        >>> import socket, time, pysockkit as sk
        >>> from pysockkit._watch import watch
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> cli = socket.create_connection(srv.getsockname())
        >>> peer, _ = srv.accept()
        >>> trace = watch(cli)
        >>> cli.shutdown(socket.SHUT_WR)       # our FIN: FIN_WAIT_1, FIN_WAIT_2
        >>> trace.wait_for("FIN_WAIT_2")
        True
        >>> peer.close()                       # theirs: TIME_WAIT
        >>> trace.wait_for("TIME_WAIT")
        True
        >>> trace.stop(); cli.close(); srv.close()
        >>> trace.states[0], trace.states[-1]
        (<TcpState.ESTABLISHED: 1>, <TcpState.TIME_WAIT: 6>)
    """
    follow = check_timeout(follow, "follow")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"interval must be a number of seconds, not {interval!r}")
    if not 20e-6 <= interval <= 3600:
        raise ValueError(f"interval must be between 20e-6 and 3600 seconds, not {interval!r}")
    for name, v, hi in (("max_transitions", max_transitions, _MAX_RING),
                        ("max_samples", max_samples, _MAX_RING)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{name} must be an int in 1..{hi}, not {v!r}")
    fd = -1
    tup: Optional[tuple[int, str, int, str, int]] = None
    if isinstance(target, int) and not isinstance(target, bool):
        fd = target
        desc = f"fd {fd}"
    elif hasattr(target, "fileno"):
        fd = int(target.fileno())
        desc = f"{type(target).__name__} fd {fd}"
    elif hasattr(target, "local") and hasattr(target, "remote"):
        tup = _tuple_arg(target.local, target.remote)
        desc = f"{format_address(tup[1:3])} → {format_address(tup[3:5])}"
    elif isinstance(target, (tuple, list)) and len(target) == 2:
        local, remote = target
        if not (isinstance(local, (tuple, list)) and isinstance(remote, (tuple, list))
                and len(local) >= 2 and len(remote) >= 2):
            raise TypeError("a 4-tuple target is ((local_host, local_port), "
                            "(remote_host, remote_port))")
        tup = _tuple_arg(local, remote)
        desc = f"{format_address(tup[1:3])} → {format_address(tup[3:5])}"
    else:
        raise TypeError(
            "watch() needs a socket (anything with fileno()), a file descriptor, "
            f"or ((local_host, local_port), (remote_host, remote_port)); got {target!r}")
    if tup is None and fd < 0:
        raise ValueError(f"{desc}: the socket is closed (fileno() is {fd})")
    w = _native.Watcher(fd=fd, tuple=tup, interval=float(interval),
                      sample_info=bool(sample_info), max_transitions=max_transitions,
                      max_samples=max_samples)
    return StateTrace(w, desc, follow)
