"""TCP segments on the loopback: the capture, decoded, as :class:`Segment`.

The capture is C (``csrc/core/capture.[ch]``): an ``AF_PACKET`` socket bound to
the interface (``lo``) with a classic BPF filter for the ports asked for,
so nothing else is copied to user space; kernel timestamps in nanoseconds;
each loopback packet once (the incoming copy; the outgoing one is refused
in the kernel); IPv4 and IPv6; a bounded ring that keeps the first
segments and counts the ones it had no room for.  It needs CAP_NET_RAW:
as root it records the host's loopback, otherwise :func:`record` raises
:class:`CaptureNotPermitted`, which points to :func:`pysockkit.lab.conversation`
(that records in a private network namespace, unprivileged).

Example::

    >>> import pysockkit as sk
    >>> with sk.listen(("127.0.0.1", 0)) as srv:          # doctest: +SKIP
    ...     with sk.record(port=srv.address[1]) as rec:
    ...         c = sk.connect(srv.address); s = srv.accept()
    ...         c.close(); s.close()
    >>> print(rec.segments[0].flags)                       # doctest: +SKIP
    SYN
"""

from __future__ import annotations

import enum
import errno
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from . import _core
from ._enums import TcpState, kernel_state
from ._errors import Error
from ._net import format_address
from ._watch import _tuple_arg


__all__ = [
    "TcpFlags",
    "TcpOptions",
    "Segment",
    "CaptureNotPermitted",
]

# The Capture and Watcher types (csrc/binding/capture.c, watch.c) are
# used untyped here: their records are plain tuples, checked at this
# boundary.
_native: Any = _core

DEFAULT_MAX_SEGMENTS = int(_native.CAPTURE_DEFAULT_SEGMENTS)
MAX_SEGMENTS = int(_native.CAPTURE_MAX_SEGMENTS)
DEFAULT_PAYLOAD = int(_native.CAPTURE_DEFAULT_PAYLOAD)
MAX_PAYLOAD = int(_native.CAPTURE_MAX_PAYLOAD)
MAX_PORTS = int(_native.CAPTURE_MAX_PORTS)

Address = tuple[str, int]

_OPT_MSS, _OPT_WSCALE, _OPT_SACK_PERM, _OPT_TS, _OPT_SACK, _OPT_BAD = 1, 2, 4, 8, 16, 128


class CaptureNotPermitted(Error, PermissionError):
    """Recording packets needs CAP_NET_RAW, which this process lacks.

    Raised by :func:`record` (errno EPERM).  Run as root, or use
    :func:`pysockkit.lab.conversation`, which runs its scenario in a
    private user and network namespace where no privilege is needed.

    Example::

        >>> import pysockkit as sk
        >>> try:                                       # doctest: +SKIP
        ...     sk.record(port=9000)
        ... except sk.CaptureNotPermitted as exc:
        ...     print(exc.errno == errno.EPERM)
        True
    """


class TcpFlags(enum.IntFlag):
    """The flags of a TCP segment (byte 13 of the header).

    ``str()`` joins the names with ``|``, SYN and FIN first: ``SYN|ACK``,
    ``FIN|ACK``, ``PSH|ACK``, ``RST``.

    Example::

        >>> from pysockkit import TcpFlags
        >>> f = TcpFlags.SYN | TcpFlags.ACK
        >>> str(f), int(f), TcpFlags.ACK in f
        ('SYN|ACK', 18, True)
    """

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80

    def __str__(self) -> str:
        names = [m.name for m in _FLAG_ORDER if m in self and m.name is not None]
        return "|".join(names) if names else "none"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def text(self, sep: str = "|") -> str:
        """The flag names joined with *sep* (``"SYN+ACK"`` with ``"+"``).

        Example::

            >>> (TcpFlags.SYN | TcpFlags.ACK).text("+")
            'SYN+ACK'
        """
        return str(self).replace("|", sep)


_FLAG_ORDER = (TcpFlags.SYN, TcpFlags.FIN, TcpFlags.RST, TcpFlags.PSH, TcpFlags.ACK,
               TcpFlags.URG, TcpFlags.ECE, TcpFlags.CWR)


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """The TCP options of a segment that matter for teaching.

    - ``mss``: maximum segment size announced (SYN, SYN+ACK), or None;
    - ``wscale``: window scale shift (SYN, SYN+ACK), or None;
    - ``sack_permitted``: SACK may be used (SYN, SYN+ACK);
    - ``timestamps``: ``(tsval, tsecr)`` (RFC 7323), or None;
    - ``sack``: SACK blocks ``((left, right), ...)``;
    - ``malformed``: an option had a bad length (the walk stopped there).

    Example::

        >>> o = TcpOptions(mss=65495, wscale=7, sack_permitted=True,
        ...                timestamps=(1000, 0))
        >>> str(o)
        'mss 65495,sackOK,TS val 1000 ecr 0,wscale 7'
    """

    mss: Optional[int] = None
    wscale: Optional[int] = None
    sack_permitted: bool = False
    timestamps: Optional[tuple[int, int]] = None
    sack: tuple[tuple[int, int], ...] = ()
    malformed: bool = False

    def __str__(self) -> str:
        parts: list[str] = []
        if self.mss is not None:
            parts.append(f"mss {self.mss}")
        if self.sack_permitted:
            parts.append("sackOK")
        if self.timestamps is not None:
            parts.append(f"TS val {self.timestamps[0]} ecr {self.timestamps[1]}")
        if self.wscale is not None:
            parts.append(f"wscale {self.wscale}")
        if self.sack:
            parts.append("sack " + " ".join(f"{a}:{b}" for a, b in self.sack))
        if self.malformed:
            parts.append("malformed")
        return ",".join(parts)

    def short(self) -> str:
        """The handshake options in a few words (``mss=65495 wscale=7
        sackOK TS``); empty for a segment without them.

        Example::

            >>> TcpOptions(mss=1460, sack_permitted=True).short()
            'mss=1460 sackOK'
        """
        parts: list[str] = []
        if self.mss is not None:
            parts.append(f"mss={self.mss}")
        if self.wscale is not None:
            parts.append(f"wscale={self.wscale}")
        if self.sack_permitted:
            parts.append("sackOK")
        if self.timestamps is not None and (self.mss is not None or self.wscale is not None):
            parts.append("TS")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment, as captured.

    - ``time``: seconds from the recording's start (kernel timestamp);
    - ``src``, ``dst``: ``(host, port)``;
    - ``flags``: :class:`TcpFlags`;
    - ``seq``, ``ack``: the raw 32-bit numbers (``ack`` is 0 without ACK);
    - ``rseq``, ``rack``: relative to each side's initial sequence number,
      as Wireshark shows them (the SYN has rseq 0, the SYN+ACK rack 1);
    - ``window``: the raw 16-bit window field (scale it by the wscale of
      the handshake);
    - ``length``: payload bytes;
    - ``options``: :class:`TcpOptions`;
    - ``payload``: the first captured payload bytes (at most the
      recording's ``payload_bytes``; not shown in the repr).

    Example::

        >>> s = Segment(0.0, ("127.0.0.1", 40000), ("127.0.0.1", 5000),
        ...             TcpFlags.SYN, 1000, 0, 0, 0, 65495, 0, TcpOptions(mss=65495))
        >>> s.label()
        'SYN seq=0 mss=65495'
        >>> s.end_rseq                  # the SYN takes one sequence number
        1
    """

    time: float
    src: Address
    dst: Address
    flags: TcpFlags
    seq: int
    ack: int
    rseq: int
    rack: int
    window: int
    length: int
    options: TcpOptions = field(default_factory=TcpOptions)
    payload: bytes = field(default=b"", repr=False)

    @property
    def seg_len(self) -> int:
        """Sequence numbers this segment uses: payload bytes, plus one for
        SYN and one for FIN.

        Example::

            >>> Segment(0, ("a", 1), ("b", 2), TcpFlags.FIN | TcpFlags.ACK,
            ...         5, 9, 1, 1, 512, 0).seg_len
            1
        """
        return (self.length + (1 if TcpFlags.SYN in self.flags else 0)
                + (1 if TcpFlags.FIN in self.flags else 0))

    @property
    def end_rseq(self) -> int:
        """``rseq + seg_len``: the relative number the peer acknowledges.

        Example::

            >>> Segment(0, ("a", 1), ("b", 2), TcpFlags.PSH | TcpFlags.ACK,
            ...         5, 9, 1, 1, 512, 9).end_rseq
            10
        """
        return self.rseq + self.seg_len

    def label(self, numbers: str = "relative", isn: Optional[tuple[str, str]] = None) -> str:
        """The segment in one line: flags, seq, ack, len, handshake
        options.  *numbers* is ``"relative"`` (rseq/rack),
        ``"absolute"`` (raw) or ``"symbolic"``: textbook notation, with
        *isn* naming the two initial sequence numbers (the sender's first:
        ``("x", "y")``), giving ``SYN+ACK seq=y ack=x+1``.

        Example::

            >>> s = Segment(0, ("a", 1), ("b", 2), TcpFlags.SYN | TcpFlags.ACK,
            ...             77, 1001, 0, 1, 65483, 0)
            >>> s.label(), s.label("symbolic", ("y", "x"))
            ('SYN|ACK seq=0 ack=1', 'SYN+ACK seq=y ack=x+1')
        """
        ack_on = TcpFlags.ACK in self.flags
        if numbers == "absolute":
            seq, ack = str(self.seq), str(self.ack)
        elif numbers == "symbolic":
            mine, theirs = isn if isn is not None else ("x", "y")
            seq, ack = _sym(mine, self.rseq), _sym(theirs, self.rack)
        elif numbers == "relative":
            seq, ack = str(self.rseq), str(self.rack)
        else:
            raise ValueError(f"numbers must be 'relative', 'absolute' or 'symbolic', "
                             f"not {numbers!r}")
        parts = [self.flags.text("+") if numbers == "symbolic" else str(self.flags),
                 f"seq={seq}"]
        if ack_on:
            parts.append(f"ack={ack}")
        syn = TcpFlags.SYN in self.flags
        if self.length:
            parts.append(f"len={self.length}")
        opts = self.options.short() if syn and numbers != "symbolic" else ""
        if opts:
            parts.append(opts)
        return " ".join(parts)

    def __str__(self) -> str:
        return (f"{self.time * 1e3:.3f} ms {format_address(self.src)} > "
                f"{format_address(self.dst)}: {self.label()}")


def _sym(name: str, rel: int) -> str:
    return name if rel == 0 else (f"{name}+{rel}" if rel < 2**31 else f"{name}-{2**32 - rel}")


# --------------------------------------------------------------------------
# From the C tuples to Segments: relative numbering per connection


def _conn_key(a: Address, b: Address) -> tuple[Address, Address]:
    return (a, b) if a <= b else (b, a)


class _Numbering:
    """Relative sequence numbers, per connection and direction: the base
    of a direction is the sequence number of its SYN, else the first
    number seen for it (its seq, or an ack of it)."""

    def __init__(self) -> None:
        self.base: dict[tuple[Address, Address], int] = {}  # (src, dst) -> base

    def segment(self, t: float, raw: tuple[Any, ...]) -> Segment:
        (_t_ns, _fam, src_h, sport, dst_h, dport, seq, ack, flags, window, length,
         payload, opts, mss, wscale, tsval, tsecr, sack, _urg) = raw
        src, dst = (str(src_h), int(sport)), (str(dst_h), int(dport))
        fl = TcpFlags(int(flags))
        fwd, rev = (src, dst), (dst, src)
        if TcpFlags.SYN in fl:
            self.base[fwd] = int(seq)           # a new connection on this 4-tuple
            if TcpFlags.ACK not in fl:
                self.base.pop(rev, None)
        self.base.setdefault(fwd, int(seq))
        has_ack = TcpFlags.ACK in fl
        if has_ack:
            # no SYN seen from the other side: its next byte is number 0
            self.base.setdefault(rev, int(ack))
        rseq = (int(seq) - self.base[fwd]) & 0xFFFFFFFF
        rack = ((int(ack) - self.base[rev]) & 0xFFFFFFFF) if has_ack else 0
        o = int(opts)
        options = TcpOptions(
            mss=int(mss) if o & _OPT_MSS else None,
            wscale=int(wscale) if o & _OPT_WSCALE else None,
            sack_permitted=bool(o & _OPT_SACK_PERM),
            timestamps=(int(tsval), int(tsecr)) if o & _OPT_TS else None,
            sack=tuple((int(a), int(b)) for a, b in sack) if o & _OPT_SACK else (),
            malformed=bool(o & _OPT_BAD))
        return Segment(t, src, dst, fl, int(seq), int(ack) if has_ack else 0, rseq, rack,
                       int(window), int(length), options, bytes(payload))


def segments_from_raw(raws: Iterable[tuple[Any, ...]], start_ns: int) -> list[Segment]:
    """Segments from the C capture's tuples, ``time`` relative to
    *start_ns* (CLOCK_MONOTONIC), numbered per connection.

    Example::

        >>> segments_from_raw([], 0)
        []
    """
    num = _Numbering()
    return [num.segment((int(r[0]) - start_ns) / 1e9, r) for r in raws]


def parse_packet(data: bytes, ethertype: int = 0) -> Segment:
    """Decode one IPv4/IPv6 packet (from the network header on) with the
    C parser; ``time`` 0, relative numbers from this segment alone.
    Raises ValueError saying what is wrong with a packet that is not TCP.

    Example::

        >>> import struct
        >>> tcp = struct.pack(">HHIIBBHHH", 40000, 5000, 7, 0, 5 << 4, 2, 1024, 0, 0)
        >>> ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
        ...                  bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        >>> str(parse_packet(ip + tcp).flags)
        'SYN'
    """
    raw = _native.capture_parse(bytes(data), ethertype)
    return _Numbering().segment(0.0, raw)


# --------------------------------------------------------------------------
# record(): the live capture, with the state sampler on each connection


def _capture_error(exc: OSError) -> BaseException:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return CaptureNotPermitted(
            exc.errno,
            "recording packets needs CAP_NET_RAW (root, or a capability set on "
            "the interpreter), which this process lacks; "
            "sk.lab.conversation(name) records a scenario without privileges, in a "
            "private network namespace")
    return exc


class _LiveSource:
    """A running capture plus a thread that starts a state sampler on
    both ends of each new connection it sees (through sock_diag, by
    4-tuple), for at most *max_watched* connections."""

    def __init__(self, cap: Any, interval: float, max_watched: int) -> None:
        self.cap = cap
        self.start_ns = int(cap.stats()["start_ns"])
        self.interval = interval
        self.max_watched = max_watched
        self.watchers: dict[tuple[Address, Address], Any] = {}  # (local, remote)
        self.unwatched = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if max_watched > 0:
            self._thread = threading.Thread(target=self._follow, name="pysockkit-record",
                                            daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        seen = 0
        while not self._stop.is_set():
            n = int(self.cap.wait(seen + 1, 0.05))
            if n <= seen:
                if not self.cap.stats()["running"]:
                    return
                continue
            for raw in self.cap.segments(seen):
                self._watch_ends(raw)
            seen = n

    def _watch_ends(self, raw: tuple[Any, ...]) -> None:
        src, dst = (str(raw[2]), int(raw[3])), (str(raw[4]), int(raw[5]))
        with self._lock:
            if (src, dst) in self.watchers or self._stop.is_set():
                return
            if len(self.watchers) >= 2 * self.max_watched:
                if (dst, src) not in self.watchers:
                    self.unwatched += 1
                return
            for local, remote in ((src, dst), (dst, src)):
                try:
                    w = _native.Watcher(tuple=_tuple_arg(local, remote),
                                        interval=self.interval)
                except (OSError, ValueError):
                    continue
                self.watchers[(local, remote)] = w

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.cap.stop()
        with self._lock:
            for w in self.watchers.values():
                w.stop()

    def observed(self) -> dict[tuple[Address, Address], list[tuple[int, TcpState, str]]]:
        with self._lock:
            items = list(self.watchers.items())
        out: dict[tuple[Address, Address], list[tuple[int, TcpState, str]]] = {}
        for (local, remote), w in items:
            out[(local, remote)] = clean_observed(
                [(int(t), int(s), bool(v)) for t, s, v in w.transitions()], tuple_watch=True)
        return out


def clean_observed(trs: Iterable[tuple[int, int, bool]], *,
                   tuple_watch: bool) -> list[tuple[int, TcpState, str]]:
    """A watcher's transitions ``(t_ns, state, via_diag)`` as observations
    ``(t_ns, TcpState, by)`` of one connection's end: CLOSED only where it
    means it.  A 4-tuple watch reads CLOSED ("nothing there") before the
    socket exists; and a CLOSED followed by another state is the moment
    between a request socket and the full socket that replaces it (a
    connection never comes back from CLOSED).  Both are dropped.

    Example::

        >>> [(t, s.name, by) for t, s, by in clean_observed(
        ...     [(0, 7, True), (5, 3, True), (6, 7, True), (9, 1, True)], tuple_watch=True)]
        [(5, 'SYN_RCVD', 'sock_diag'), (9, 'ESTABLISHED', 'sock_diag')]
    """
    rows = [(t, kernel_state(s), "sock_diag" if via else "TCP_INFO")
            for t, s, via in trs]
    out: list[tuple[int, TcpState, str]] = []
    for i, (t, st, by) in enumerate(rows):
        if st is TcpState.CLOSED:
            if i == 0 and tuple_watch:
                continue
            if 0 < i < len(rows) - 1:
                continue
        if out and out[-1][1] is st:
            continue
        out.append((t, st, by))
    return out
