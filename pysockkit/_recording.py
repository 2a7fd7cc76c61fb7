"""A recording: TCP segments and both ends' states, merged into one story.

Made by :func:`pysockkit.record` (your own loopback traffic, as root) and
:func:`pysockkit.lab.conversation` (a scenario in a private network
namespace).  It holds the captured :class:`~pysockkit.Segment` list and,
for each end of each connection, the states it went through:

- **observed**: what the kernel reported, read by the state sampler
  (``TCP_INFO`` on a descriptor, or ``sock_diag`` by 4-tuple, a few
  thousand times a second);
- **inferred**: the RFC 793 transition that a segment implies (a SYN+ACK
  received in SYN_SENT means ESTABLISHED), for the states the sampler was
  too slow to see.  On loopback SYN_SENT, SYN_RCVD and LAST_ACK often last
  a few microseconds.

The two are aligned in order (a longest common subsequence of the state
paths): an inferred state that the sampler also saw becomes observed (at
the time the sampler saw it), one it did not see stays inferred, and a
state only the sampler saw is kept as observed.  An inferred state is
never presented as observed: :class:`StateChange` says which it is.

Example::

    >>> import pysockkit as sk
    >>> rec = sk.lab.conversation("handshake")               # doctest: +SKIP
    >>> [(round(t, 4), s.name) for t, s in rec.states["server"]]  # doctest: +SKIP
    [(0.0, 'LISTEN'), (0.0002, 'SYN_RCVD'), (0.0004, 'ESTABLISHED')]
    >>> rec.states["server"][1].observed                     # doctest: +SKIP
    False
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Optional

from ._capture import (
    DEFAULT_MAX_SEGMENTS,
    DEFAULT_PAYLOAD,
    MAX_PAYLOAD,
    MAX_PORTS,
    MAX_SEGMENTS,
    Segment,
    TcpFlags,
    TcpOptions,
    _capture_error,
    _LiveSource,
    _native,
    _Numbering,
)
from ._display import html_table, text_table
from ._enums import TcpState
from ._net import format_address
from ._types import Framing

__all__ = ["Recording", "RecordedConnection", "StateChange", "SegmentTable", "record"]

Address = tuple[str, int]
Pair = tuple[Address, Address]          # (local, remote) of one end
Observation = tuple[float, TcpState, str]  # (seconds, state, "TCP_INFO" / "sock_diag")

_MASK = 0xFFFFFFFF


class StateChange(tuple[float, TcpState]):
    """One entry of ``Recording.states[end]``: a ``(time, state)`` pair
    that also says how it is known.

    - ``time``: seconds from the recording's start: when the kernel
      reported it (observed), or when the segment that implies it was
      captured (inferred);
    - ``state``: the :class:`~pysockkit.TcpState`;
    - ``observed``: True if the state sampler saw it, False if it is
      inferred from a segment (RFC 793);
    - ``by``: ``"TCP_INFO"`` or ``"sock_diag"`` when observed; the event
      (``"rcv SYN+ACK, snd ACK"``) when inferred;
    - ``segment``: the index in ``Recording.segments`` of the segment that
      implies it, or None (the initial state, or a state only the sampler
      saw).

    It unpacks and compares as the pair: ``for t, state in rec.states["client"]``.

    Example::

        >>> c = StateChange(0.0012, TcpState.SYN_RCVD, False, "rcv SYN, snd SYN+ACK", 0)
        >>> t, s = c
        >>> s.name, c.observed, c.segment
        ('SYN_RCVD', False, 0)
    """

    observed: bool
    by: str
    segment: Optional[int]

    def __new__(cls, time: float, state: TcpState, observed: bool, by: str,
                segment: Optional[int] = None) -> StateChange:
        self = super().__new__(cls, (float(time), state))
        object.__setattr__(self, "observed", bool(observed))
        object.__setattr__(self, "by", str(by))
        object.__setattr__(self, "segment", segment)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("StateChange is immutable")

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.observed, self.by, self.segment)

    @property
    def time(self) -> float:
        """Seconds from the recording's start.

        Example::

            >>> StateChange(0.5, TcpState.LISTEN, True, "TCP_INFO").time
            0.5
        """
        return self[0]

    @property
    def state(self) -> TcpState:
        """The state.

        Example::

            >>> StateChange(0.5, TcpState.LISTEN, True, "TCP_INFO").state.name
            'LISTEN'
        """
        return self[1]

    def __repr__(self) -> str:
        how = f"observed by {self.by}" if self.observed else f"inferred: {self.by}"
        return f"StateChange({self[0]:.6f}, {self[1].name}, {how})"


# --------------------------------------------------------------------------
# RFC 793: the transition a segment implies, for its sender and receiver


class _End:
    """One end's state machine, driven by the segments it sends and
    receives (raw sequence numbers)."""

    def __init__(self, state: TcpState) -> None:
        self.state = state
        self.fin_end: Optional[int] = None   # ack that covers our FIN
        self.event = ""                      # what the last segment did without a change

    def _to(self, out: list[tuple[TcpState, str]], st: TcpState, why: str) -> None:
        if st is not self.state:
            self.state = st
            out.append((st, why))

    def send(self, seg: Segment) -> list[tuple[TcpState, str]]:
        out: list[tuple[TcpState, str]] = []
        f = seg.flags
        S = TcpState
        if TcpFlags.RST in f:
            if self.state not in (S.CLOSED, S.LISTEN):
                self._to(out, S.CLOSED, "abort: snd RST")
            return out
        if TcpFlags.SYN in f and TcpFlags.ACK not in f and self.state is S.CLOSED:
            self._to(out, S.SYN_SENT, "connect(): snd SYN")
        if TcpFlags.SYN in f and TcpFlags.ACK in f and self.state is S.LISTEN:
            self._to(out, S.SYN_RCVD, "rcv SYN, snd SYN+ACK")
        if TcpFlags.FIN in f:
            self.fin_end = (seg.seq + seg.length + 1 + (1 if TcpFlags.SYN in f else 0)) & _MASK
            if self.state in (S.ESTABLISHED, S.SYN_RCVD):
                self._to(out, S.FIN_WAIT_1, "close(): snd FIN")
            elif self.state is S.CLOSE_WAIT:
                self._to(out, S.LAST_ACK, "close(): snd FIN")
        return out

    def _fin_acked(self, seg: Segment) -> bool:
        if self.fin_end is None or TcpFlags.ACK not in seg.flags:
            return False
        return ((seg.ack - self.fin_end) & _MASK) < 2**31

    def receive(self, seg: Segment) -> list[tuple[TcpState, str]]:
        out: list[tuple[TcpState, str]] = []
        f = seg.flags
        S = TcpState
        if TcpFlags.RST in f:
            if self.state not in (S.CLOSED, S.LISTEN):
                self._to(out, S.CLOSED, "rcv RST")
            return out
        if TcpFlags.SYN in f:
            if TcpFlags.ACK in f:
                if self.state is S.SYN_SENT:
                    self._to(out, S.ESTABLISHED, "rcv SYN+ACK, snd ACK")
            elif self.state is S.LISTEN:
                self._to(out, S.SYN_RCVD, "rcv SYN, snd SYN+ACK")
            elif self.state is S.SYN_SENT:
                self._to(out, S.SYN_RCVD, "rcv SYN (simultaneous open)")
        elif TcpFlags.ACK in f and self.state is S.SYN_RCVD:
            self._to(out, S.ESTABLISHED, "rcv ACK of SYN")
        if self._fin_acked(seg):
            if self.state is S.FIN_WAIT_1:
                self._to(out, S.FIN_WAIT_2, "rcv ACK of FIN")
            elif self.state is S.CLOSING:
                self._to(out, S.TIME_WAIT, "rcv ACK of FIN, wait 2 MSL")
            elif self.state is S.LAST_ACK:
                self._to(out, S.CLOSED, "rcv ACK of FIN")
        if TcpFlags.FIN in f:
            if self.state in (S.ESTABLISHED, S.SYN_RCVD):
                self._to(out, S.CLOSE_WAIT, "rcv FIN, snd ACK")
            elif self.state is S.FIN_WAIT_1:
                self._to(out, S.CLOSING, "rcv FIN (simultaneous close), snd ACK")
            elif self.state is S.FIN_WAIT_2:
                self._to(out, S.TIME_WAIT, "rcv FIN, snd ACK, wait 2 MSL")
            elif self.state is S.TIME_WAIT and not out:
                self.event = "in TIME_WAIT: ACKs it again, the 2 MSL wait starts over"
        return out


def infer_states(segments: Sequence[Segment], indices: Sequence[int], a: Address,
                 b: Address, initial: dict[Address, TcpState],
                 lost: Iterable[int] = (), events: Optional[dict[int, str]] = None,
                 ) -> dict[Address, list[tuple[float, TcpState, str, Optional[int]]]]:
    """The RFC 793 path of both ends *a* and *b* of one connection, from
    its segments (``segments[i]`` for i in *indices*, in order), starting
    from *initial*.  A segment in *lost* was dropped on arrival: only its
    sender acts on it.  Returns ``{address: [(time, state, event,
    segment index or None), ...]}``, the initial state first; *events*, if
    given, receives ``{segment index: text}`` for a segment that matters
    without a change of state (a FIN received again in TIME_WAIT).

    Example::

        >>> from pysockkit._capture import Segment, TcpFlags as F
        >>> A, B = ("127.0.0.1", 40000), ("127.0.0.1", 5000)
        >>> segs = [Segment(0.0, A, B, F.SYN, 100, 0, 0, 0, 65495, 0),
        ...         Segment(0.1, B, A, F.SYN | F.ACK, 700, 101, 0, 1, 65483, 0),
        ...         Segment(0.2, A, B, F.ACK, 101, 701, 1, 1, 512, 0)]
        >>> p = infer_states(segs, [0, 1, 2], A, B,
        ...                  {A: TcpState.CLOSED, B: TcpState.LISTEN})
        >>> [s.name for _, s, _, _ in p[B]]
        ['LISTEN', 'SYN_RCVD', 'ESTABLISHED']
    """
    ends = {a: _End(initial.get(a, TcpState.ESTABLISHED)),
            b: _End(initial.get(b, TcpState.ESTABLISHED))}
    out: dict[Address, list[tuple[float, TcpState, str, Optional[int]]]] = {
        addr: [(0.0, e.state, "initial", None)] for addr, e in ends.items()}
    dropped = set(lost)
    for i in indices:
        seg = segments[i]
        snd, rcv = ends.get(seg.src), ends.get(seg.dst)
        if snd is None or rcv is None:
            continue
        for st, why in snd.send(seg):
            out[seg.src].append((seg.time, st, why, i))
        if i in dropped:
            continue
        rcv.event = ""
        for st, why in rcv.receive(seg):
            out[seg.dst].append((seg.time, st, why, i))
        if rcv.event and events is not None:
            events[i] = rcv.event
    return out


def merge_states(inferred: Sequence[tuple[float, TcpState, str, Optional[int]]],
                 observed: Sequence[Observation]) -> list[StateChange]:
    """Align an end's inferred path with what its sampler observed (a
    longest common subsequence of the two state sequences, in order):
    matched states are observed (the sampler's time, the segment that
    implies them); inferred-only states stay inferred; observed-only
    states are kept, observed, with no segment.

    Example::

        >>> inf = [(0.0, TcpState.CLOSED, "initial", None),
        ...        (0.1, TcpState.SYN_SENT, "connect(): snd SYN", 0),
        ...        (0.2, TcpState.ESTABLISHED, "rcv SYN+ACK, snd ACK", 1)]
        >>> obs = [(0.0, TcpState.CLOSED, "TCP_INFO"), (0.3, TcpState.ESTABLISHED, "TCP_INFO")]
        >>> [(s.state.name, s.observed) for s in merge_states(inf, obs)]
        [('CLOSED', True), ('SYN_SENT', False), ('ESTABLISHED', True)]
    """
    n, m = len(inferred), len(observed)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if inferred[i][1] is observed[j][1]:
                lcs[i][j] = lcs[i + 1][j + 1] + 1
            else:
                lcs[i][j] = max(lcs[i + 1][j], lcs[i][j + 1])
    out: list[StateChange] = []
    gap_inf: list[StateChange] = []
    gap_obs: list[StateChange] = []

    def flush() -> None:
        out.extend(sorted(gap_inf + gap_obs, key=lambda c: c[0]))
        gap_inf.clear()
        gap_obs.clear()

    i = j = 0
    while i < n or j < m:
        if i < n and j < m and inferred[i][1] is observed[j][1]:
            flush()
            t, st, _why, seg = inferred[i]
            out.append(StateChange(observed[j][0], st, True, observed[j][2], seg))
            i += 1
            j += 1
        elif j < m and (i == n or lcs[i][j + 1] >= lcs[i + 1][j]):
            t, st, by = observed[j]
            gap_obs.append(StateChange(t, st, True, by, None))
            j += 1
        else:
            t, st, why, seg = inferred[i]
            gap_inf.append(StateChange(t, st, False, why, seg))
            i += 1
    flush()
    return out


# --------------------------------------------------------------------------
# What the payload is: frames, heartbeats, retransmissions, keepalive probes


def describe_segments(segments: Sequence[Segment], framing: Optional[Framing],
                      lost: Iterable[int] = ()) -> dict[int, str]:
    """A short note per segment index where there is something to say:
    the frames its payload carries (``frame 5 B``, ``heartbeat ping``),
    ``retransmission``, ``keepalive probe (seq-1)``, ``dropped on
    arrival``.  Each direction's payload is fed to a decoder of *framing*
    (control frames on) while it was captured whole and in order; after a
    gap or a decoding error that direction's frames are no longer named.

    Example::

        >>> from pysockkit._capture import Segment, TcpFlags as F
        >>> A, B = ("a", 1), ("b", 2)
        >>> s = Segment(0, A, B, F.PSH | F.ACK, 1, 1, 1, 1, 512, 9,
        ...             payload=b"\\x00\\x00\\x00\\x05hello")
        >>> describe_segments([s], Framing())
        {0: 'frame 5 B'}
    """
    return _describe(segments, framing, lost)[0]


def _seq_le(a: int, b: int) -> bool:
    """a <= b in sequence space (mod 2**32)."""
    return ((b - a) & _MASK) < 2**31


def _describe(segments: Sequence[Segment], framing: Optional[Framing],
              lost: Iterable[int] = ()) -> tuple[dict[int, str], dict[str, int]]:
    notes: dict[int, str] = {}
    counts = {"frames": 0, "heartbeats": 0, "retransmissions": 0, "keepalive_probes": 0}
    dropped = set(lost)
    high: dict[Pair, int] = {}          # per direction: highest raw seq used + 1
    syn_seq: dict[Pair, int] = {}
    decoders: dict[Pair, Any] = {}
    broken: set[Pair] = set()
    for i, seg in enumerate(segments):
        key, rev = (seg.src, seg.dst), (seg.dst, seg.src)
        parts: list[str] = []
        is_syn = TcpFlags.SYN in seg.flags
        if is_syn and TcpFlags.ACK not in seg.flags and syn_seq.get(key) != seg.seq:
            for k in (key, rev):  # a new connection on this 4-tuple
                high.pop(k, None)
                syn_seq.pop(k, None)
                decoders.pop(k, None)
                broken.discard(k)
        if is_syn:
            syn_seq.setdefault(key, seg.seq)
        top = high.get(key)
        used = seg.seg_len
        end = (seg.seq + used) & _MASK
        if top is not None and used > 0 and _seq_le(end, top):
            parts.append("retransmission")
            counts["retransmissions"] += 1
        elif (top is not None and used == 0 and seg.flags == TcpFlags.ACK
              and seg.seq == (top - 1) & _MASK):
            parts.append("keepalive probe (seq-1)")
            counts["keepalive_probes"] += 1
        elif seg.length > 0 and framing is not None and key not in broken:
            start = (seg.seq + (1 if is_syn else 0)) & _MASK
            if len(seg.payload) < seg.length or (top is not None and start != top):
                broken.add(key)
            else:
                parts.append(_frames_text(decoders, key, seg.payload, framing, broken,
                                          counts))
        if used > 0:
            high[key] = end if top is None or _seq_le(top, end) else top
        elif top is None:
            high[key] = seg.seq
        if i in dropped:
            parts.append("dropped on arrival")
        text = ", ".join(p for p in parts if p)
        if text:
            notes[i] = text
    return notes, counts


def _frames_text(decoders: dict[Pair, Any], key: Pair, payload: bytes,
                 framing: Framing, broken: set[Pair], counts: dict[str, int]) -> str:
    dec = decoders.get(key)
    if dec is None:
        dec = decoders[key] = framing.decoder(control=True)
    try:
        frames = dec.feed(payload)
        controls = dec.take_control()
    except (OSError, ValueError):
        broken.add(key)
        return ""
    items = [f"frame {len(f if isinstance(f, (bytes, bytearray)) else f[1])} B"
             for f in frames]
    counts["frames"] += len(items)
    for body in controls:
        kind = body[0] if body else -1
        items.append({1: "heartbeat ping", 2: "heartbeat pong"}.get(kind, "control frame"))
        counts["heartbeats"] += kind in (1, 2)
    if not items:
        return "part of a frame"
    if len(items) == 1:
        return items[0]
    if all(x.startswith("frame ") for x in items):
        return f"{len(items)} frames: " + ", ".join(x[6:] for x in items)
    return " + ".join(items)


# --------------------------------------------------------------------------
# Tables


class SegmentTable(list[Segment]):
    """The segments of a recording as rows: ``print()`` it for a text
    table, or show it in Jupyter for HTML.  Made by
    :meth:`Recording.table`.

    Example::

        >>> t = SegmentTable([], notes={})
        >>> str(t).split()[:4]
        ['#', 'time', '(ms)', 'src']
    """

    _HEAD = ("#", "time (ms)", "src", "dst", "flags", "seq", "ack", "rseq", "rack",
             "win", "len", "options", "note")

    def __init__(self, segments: Iterable[Segment], notes: dict[int, str],
                 first: int = 0) -> None:
        super().__init__(segments)
        self._notes = dict(notes)
        self._first = first

    def _rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for k, s in enumerate(self):
            i = self._first + k
            ack = TcpFlags.ACK in s.flags
            rows.append((str(i), f"{s.time * 1e3:.3f}", format_address(s.src),
                         format_address(s.dst), str(s.flags), str(s.seq),
                         str(s.ack) if ack else "-", str(s.rseq),
                         str(s.rack) if ack else "-", str(s.window), str(s.length),
                         str(s.options) or "-", self._notes.get(i, "")))
        return rows

    def __str__(self) -> str:
        return text_table(self._HEAD, self._rows(), right=frozenset({0, 1, 5, 6, 7, 8, 9, 10}))

    def _repr_html_(self) -> str:
        return html_table(self._HEAD, self._rows(), right=frozenset({0, 1, 5, 6, 7, 8, 9, 10}))


# --------------------------------------------------------------------------
# Connections


@dataclass(frozen=True)
class RecordedConnection:
    """One connection of a recording: its two ends, left (the one that
    opened it, or the client) and right, with their names, and the
    indices of its segments.

    Example::

        >>> c = RecordedConnection(("client", "server"),
        ...                        (("127.0.0.1", 1), ("127.0.0.1", 2)), (0, 1))
        >>> c.names[0], c.indices
        ('client', (0, 1))
    """

    names: tuple[str, str]
    addresses: tuple[Address, Address]
    indices: tuple[int, ...]


class Recording:
    """TCP segments and the states of both ends, from :func:`pysockkit.record`
    or :func:`pysockkit.lab.conversation`.

    - ``segments``: list of :class:`~pysockkit.Segment`, in capture order;
    - ``states``: ``{end: [StateChange, ...]}`` -- each is a ``(time,
      state)`` pair with ``.observed`` (seen by the kernel sampler) or not
      (inferred from a segment, RFC 793); the ends are ``"client"`` and
      ``"server"`` in a scenario, addresses (``"127.0.0.1:9000"``) in
      :func:`pysockkit.record`;
    - ``connections``: the connections, each with its two ends and
      segments;
    - ``notes``: ``{segment index: text}`` (frames, retransmission,
      keepalive probe, dropped on arrival); ``lost``: indices of segments
      a scenario's filter dropped on arrival;
    - ``dropped``: segments seen but not kept (ring full) plus those the
      kernel dropped; never silent: ``str()`` says so;
    - ``str(rec)``: a text ladder within 100 columns; in Jupyter an SVG
      ladder (``_repr_svg_``, ``_repr_html_``); ``rec.table()``: one row
      per segment; ``rec.counts()`` / ``rec.summary``: segment and byte
      counts.

    A recording from :func:`pysockkit.record` fills while its ``with``
    block runs and is final after it (or after :meth:`stop`).

    Example::

        >>> import pysockkit as sk
        >>> rec = sk.lab.conversation("close")                   # doctest: +SKIP
        >>> print(rec)                                           # doctest: +SKIP
        >>> [str(s.flags) for s in rec.segments][-4:]            # doctest: +SKIP
        ['FIN|ACK', 'ACK', 'FIN|ACK', 'ACK']
    """

    def __init__(
        self,
        *,
        name: str,
        description: str,
        segments: Sequence[Segment],
        observed: Optional[dict[Pair, Sequence[Observation]]] = None,
        names: Optional[dict[Address, str]] = None,
        initial: Optional[dict[Address, TcpState]] = None,
        lost: Iterable[int] = (),
        notes: Optional[dict[int, str]] = None,
        ports: tuple[int, ...] = (),
        framing: Optional[Framing] = Framing(),
        stats: Optional[dict[str, Any]] = None,
        duration: Optional[float] = None,
    ) -> None:
        """Made by :func:`pysockkit.record` and
        :func:`pysockkit.lab.conversation`; not meant to be called directly."""
        self.name = name
        self.description = description
        self._segments = list(segments)
        self._observed: dict[Pair, list[Observation]] = {
            k: list(v) for k, v in (observed or {}).items()}
        self._names = dict(names or {})
        self._initial = dict(initial or {})
        self.lost: tuple[int, ...] = tuple(sorted(set(lost)))
        self._extra_notes = dict(notes or {})
        self.ports = tuple(ports)
        self.framing = framing
        self._stats: dict[str, Any] = dict(stats or {})
        self._duration = duration
        self._source: Optional[_LiveSource] = None
        self._raw_count = 0
        self._numbering: Optional[_Numbering] = None
        self._cache: Optional[tuple[int, Any]] = None

    # ------------------------------------------------------------- live

    @classmethod
    def _live(cls, source: _LiveSource, *, name: str, description: str,
              ports: tuple[int, ...], framing: Optional[Framing]) -> Recording:
        rec = cls(name=name, description=description, segments=(), ports=ports,
                  framing=framing)
        rec._source = source
        rec._numbering = _Numbering()
        return rec

    def _pull(self) -> None:
        src = self._source
        if src is None:
            return
        assert self._numbering is not None
        for raw in src.cap.segments(self._raw_count):
            self._segments.append(self._numbering.segment(
                (int(raw[0]) - src.start_ns) / 1e9, raw))
            self._raw_count += 1

    @property
    def running(self) -> bool:
        """True while a :func:`pysockkit.record` capture still runs.

        Example::

            >>> Recording(name="x", description="", segments=()).running
            False
        """
        return self._source is not None and bool(self._source.cap.stats()["running"])

    def stop(self) -> None:
        """End a live recording (idempotent): the capture thread stops
        after reading what the kernel already holds, the state samplers
        stop, and the recording is final.  Nothing to do for a scenario's.

        Example::

            >>> rec = Recording(name="x", description="", segments=())
            >>> rec.stop(); rec.stop()
        """
        src = self._source
        if src is None:
            return
        src.stop()
        self._pull()
        self._stats = dict(src.cap.stats())
        self._stats.pop("error", None)
        self._duration = max(0, int(self._stats["end_ns"]) - src.start_ns) / 1e9
        for (local, remote), obs in src.observed().items():
            self._observed[(local, remote)] = [
                ((t - src.start_ns) / 1e9, st, by) for t, st, by in obs]
        self._stats["unwatched"] = src.unwatched
        self._source = None
        self._cache = None

    close = stop

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.stop()

    def __del__(self) -> None:
        src = getattr(self, "_source", None)
        if src is not None:
            src.stop()

    # ---------------------------------------------------------- content

    @property
    def segments(self) -> list[Segment]:
        """The captured segments, in capture order (a copy).

        Example::

            >>> Recording(name="x", description="", segments=()).segments
            []
        """
        self._pull()
        return list(self._segments)

    @property
    def dropped(self) -> int:
        """Segments that were seen but not kept (the ring was full) plus
        those the kernel dropped (its buffer overran).

        Example::

            >>> Recording(name="x", description="", segments=()).dropped
            0
        """
        st = self._source.cap.stats() if self._source is not None else self._stats
        return int(st.get("ring_dropped", 0)) + int(st.get("kernel_dropped", 0))

    @property
    def duration(self) -> float:
        """Seconds the recording lasted (so far, while it runs).

        Example::

            >>> Recording(name="x", description="", segments=(), duration=1.5).duration
            1.5
        """
        if self._source is not None:
            import time

            return max(0, time.monotonic_ns() - self._source.start_ns) / 1e9
        if self._duration is not None:
            return self._duration
        return self._segments[-1].time if self._segments else 0.0

    def _analysis(self) -> tuple[list[RecordedConnection], dict[str, list[StateChange]],
                                 dict[int, str], dict[str, int]]:
        self._pull()
        n = len(self._segments)
        if self._cache is not None and self._cache[0] == n and self._source is None:
            return self._cache[1]  # type: ignore[no-any-return]
        conns = self._connections()
        states: dict[str, list[StateChange]] = {}
        events: dict[int, str] = {}
        for c in conns:
            (a, b) = c.addresses
            initial = {addr: self._initial[addr] for addr in (a, b) if addr in self._initial}
            if len(initial) < 2:
                initial = {**_guess_initial(self._segments, c), **initial}
            paths = infer_states(self._segments, c.indices, a, b, initial, self.lost, events)
            for name, addr, other in ((c.names[0], a, b), (c.names[1], b, a)):
                obs = self._observed.get((addr, other), [])
                states[name] = merge_states(paths[addr], obs)
        notes, found = _describe(self._segments, self.framing, self.lost)
        for i, text in sorted({**events, **self._extra_notes}.items()):
            if i in events and i in self._extra_notes:
                text = f"{events[i]}; {self._extra_notes[i]}"
            notes[i] = f"{notes[i]}; {text}" if i in notes else text
        result = (conns, states, notes, found)
        if self._source is None:
            self._cache = (n, result)
        return result

    def _connections(self) -> list[RecordedConnection]:
        order: list[tuple[Address, Address]] = []
        members: dict[tuple[Address, Address], list[int]] = {}
        left: dict[tuple[Address, Address], Address] = {}
        for i, s in enumerate(self._segments):
            key = (s.src, s.dst) if s.src <= s.dst else (s.dst, s.src)
            if key not in members:
                order.append(key)
                members[key] = []
            members[key].append(i)
            if key not in left:
                if s.flags & (TcpFlags.SYN | TcpFlags.ACK) == TcpFlags.SYN:
                    left[key] = s.src
                elif self._names.get(s.src) == "client" or self._names.get(s.dst) == "server":
                    left[key] = s.src
                elif self._names.get(s.dst) == "client" or self._names.get(s.src) == "server":
                    left[key] = s.dst
                elif s.dst[1] in self.ports and s.src[1] not in self.ports:
                    left[key] = s.src
                elif s.src[1] in self.ports and s.dst[1] not in self.ports:
                    left[key] = s.dst
        conns: list[RecordedConnection] = []
        counts: dict[Address, int] = {}
        for key in order:
            for addr in key:
                counts[addr] = counts.get(addr, 0) + 1
        if not order and len(self._names) == 2:
            # nothing captured: the ends are still known by name
            (a, na), (b, nb) = sorted(self._names.items(), key=lambda kv: kv[1] != "client")
            return [RecordedConnection((na, nb), (a, b), ())]
        for key in order:
            a = left.get(key, self._segments[members[key][0]].src)
            b = key[1] if a == key[0] else key[0]
            names = []
            for addr, other in ((a, b), (b, a)):
                nm = self._names.get(addr)
                if nm is None:
                    nm = format_address(addr)
                    if counts[addr] > 1:
                        nm = f"{nm} with {format_address(other)}"
                names.append(nm)
            conns.append(RecordedConnection((names[0], names[1]), (a, b),
                                            tuple(members[key])))
        return conns

    @property
    def connections(self) -> list[RecordedConnection]:
        """The connections recorded, in order of their first segment.

        Example::

            >>> Recording(name="x", description="", segments=()).connections
            []
        """
        return self._analysis()[0]

    @property
    def states(self) -> dict[str, list[StateChange]]:
        """``{end: [StateChange, ...]}``: each end's states in the order it
        went through them, observed or inferred (see :class:`StateChange`).

        Example::

            >>> Recording(name="x", description="", segments=()).states
            {}
        """
        return {k: list(v) for k, v in self._analysis()[1].items()}

    @property
    def notes(self) -> dict[int, str]:
        """``{segment index: note}``: frames, retransmission, keepalive
        probe, dropped on arrival.

        Example::

            >>> Recording(name="x", description="", segments=()).notes
            {}
        """
        return dict(self._analysis()[2])

    def table(self) -> SegmentTable:
        """One row per segment: time, addresses, flags, raw and relative
        numbers, window, length, options, note.  ``print()`` it, or show it
        in Jupyter (HTML).

        Example::

            >>> print(sk.lab.conversation("handshake").table())   # doctest: +SKIP
        """
        return SegmentTable(self.segments, self.notes)

    def counts(self) -> dict[str, int]:
        """How much the conversation cost: ``segments``, ``syn``, ``fin``,
        ``rst``, ``data`` (segments with payload), ``pure_ack``,
        ``payload_bytes``, ``frames`` (data frames named), ``heartbeats``,
        ``retransmissions``, ``keepalive_probes``, ``connections``.

        Example::

            >>> Recording(name="x", description="", segments=()).counts()["segments"]
            0
        """
        segs = self.segments
        found = self._analysis()[3]
        return {
            "segments": len(segs),
            "connections": len(self.connections),
            "syn": sum(TcpFlags.SYN in s.flags for s in segs),
            "fin": sum(TcpFlags.FIN in s.flags for s in segs),
            "rst": sum(TcpFlags.RST in s.flags for s in segs),
            "data": sum(s.length > 0 for s in segs),
            "pure_ack": sum(s.length == 0 and s.flags == TcpFlags.ACK for s in segs),
            "payload_bytes": sum(s.length for s in segs),
            **found,
        }

    @property
    def summary(self) -> str:
        """The counts in one line.

        Example::

            >>> Recording(name="x", description="", segments=()).summary
            '0 segments (0 SYN, 0 FIN, 0 RST, 0 with data, 0 pure ACK), 0 payload bytes'
        """
        c = self.counts()
        text = (f"{c['segments']} segments ({c['syn']} SYN, {c['fin']} FIN, {c['rst']} RST, "
                f"{c['data']} with data, {c['pure_ack']} pure ACK), "
                f"{c['payload_bytes']} payload bytes")
        extra = []
        if c["frames"]:
            extra.append(f"{c['frames']} frame{'s' if c['frames'] != 1 else ''}")
        if c["heartbeats"]:
            extra.append(f"{c['heartbeats']} heartbeat frames")
        if c["retransmissions"]:
            extra.append(f"{c['retransmissions']} retransmitted")
        if c["keepalive_probes"]:
            extra.append(f"{c['keepalive_probes']} keepalive "
                         f"probe{'s' if c['keepalive_probes'] != 1 else ''}")
        if extra:
            text += ": " + ", ".join(extra)
        return text

    # ---------------------------------------------------------- display

    def ladder(self, numbers: str = "relative", width: int = 100) -> str:
        """The text ladder: client (or opener) on the left, server on the
        right, one arrow per segment, states in the margins (``STATE``
        observed, ``(STATE)`` inferred), times on the left.  *numbers*:
        ``"relative"`` (rseq/rack), ``"absolute"`` (raw) or ``"symbolic"``
        (``SYN seq=x``, ``SYN+ACK seq=y ack=x+1``).  Fits *width* columns
        (at least 80).

        Example::

            >>> print(sk.lab.conversation("handshake").ladder("symbolic"))  # doctest: +SKIP
        """
        from ._ladder import text_ladder

        return text_ladder(self, numbers=numbers, width=width)

    def __str__(self) -> str:
        return self.ladder()

    def svg(self, numbers: str = "relative") -> str:
        """The ladder as an SVG document (what Jupyter shows).

        Example::

            >>> sk.lab.conversation("close").svg().startswith("<svg")   # doctest: +SKIP
            True
        """
        from ._ladder import svg_ladder

        return svg_ladder(self, numbers=numbers)

    def save(self, filename: str) -> None:
        """Write the SVG ladder to *filename*.

        Example::

            >>> sk.lab.conversation("close").save("close.svg")   # doctest: +SKIP
        """
        with open(filename, "w", encoding="utf-8") as f:
            f.write(self.svg())

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_html_(self) -> str:
        import html as _h

        return (f"<div><b>{_h.escape(self.name)}</b>: {_h.escape(self.description)}"
                f"<div>{self.svg()}</div><small>{_h.escape(self.summary)}</small></div>")

    def __repr__(self) -> str:
        ends = "; ".join(
            (f"{c.names[0]} {format_address(c.addresses[0])} <-> "
             f"{c.names[1]} {format_address(c.addresses[1])}") if c.names == ("client", "server")
            else f"{format_address(c.addresses[0])} <-> {format_address(c.addresses[1])}"
            for c in self.connections) or "no connection"
        state = ", recording" if self._source is not None else ""
        return (f"<Recording {self.name}: {len(self.segments)} segments, {ends}, "
                f"{self.duration * 1e3:.1f} ms{state}>")

    # ----------------------------------------------------- serialisation

    def _to_json(self) -> str:
        """The recording as JSON (for the namespace helper to send back)."""
        self.stop()
        segs = [[s.time, list(s.src), list(s.dst), int(s.flags), s.seq, s.ack, s.rseq, s.rack,
                 s.window, s.length,
                 [s.options.mss, s.options.wscale, s.options.sack_permitted,
                  list(s.options.timestamps) if s.options.timestamps else None,
                  [list(x) for x in s.options.sack], s.options.malformed],
                 s.payload.hex()] for s in self._segments]
        fr = self.framing
        return json.dumps({
            "name": self.name, "description": self.description, "segments": segs,
            "observed": [[list(k[0]), list(k[1]),
                          [[t, int(st), by] for t, st, by in v]]
                         for k, v in self._observed.items()],
            "names": [[list(a), n] for a, n in self._names.items()],
            "initial": [[list(a), int(st)] for a, st in self._initial.items()],
            "lost": list(self.lost), "notes": [[i, t] for i, t in self._extra_notes.items()],
            "ports": list(self.ports),
            "framing": None if fr is None else [fr.header_size, fr.byteorder, fr.max_frame,
                                                fr.correlation],
            "stats": {k: v for k, v in self._stats.items()
                      if isinstance(v, (int, float, bool, str))},
            "duration": self._duration,
        })

    @classmethod
    def _from_json(cls, text: str) -> Recording:
        d = json.loads(text)

        def addr(x: Any) -> Address:
            return (str(x[0]), int(x[1]))

        segs = []
        for (t, src, dst, flags, seq, ack, rseq, rack, win, ln, o, pay) in d["segments"]:
            opts = TcpOptions(o[0], o[1], bool(o[2]), None if o[3] is None else (o[3][0], o[3][1]),
                              tuple((a, b) for a, b in o[4]), bool(o[5]))
            segs.append(Segment(float(t), addr(src), addr(dst), TcpFlags(flags), seq, ack,
                                rseq, rack, win, ln, opts, bytes.fromhex(pay)))
        fr = d["framing"]
        return cls(
            name=d["name"], description=d["description"], segments=segs,
            observed={(addr(a), addr(b)): [(float(t), TcpState(st), str(by))
                                           for t, st, by in v]
                      for a, b, v in d["observed"]},
            names={addr(a): str(n) for a, n in d["names"]},
            initial={addr(a): TcpState(st) for a, st in d["initial"]},
            lost=d["lost"], notes={int(i): str(t) for i, t in d["notes"]},
            ports=tuple(d["ports"]),
            framing=None if fr is None else Framing(fr[0], fr[1], fr[2], fr[3]),
            stats=d["stats"], duration=d["duration"])


def _guess_initial(segments: Sequence[Segment],
                   c: RecordedConnection) -> dict[Address, TcpState]:
    """Where a connection starts when nobody said: a SYN first means its
    sender was CLOSED and its receiver LISTEN; anything else means the
    connection was open before the recording began."""
    a, b = c.addresses
    if c.indices:
        first = segments[c.indices[0]]
        if first.flags & (TcpFlags.SYN | TcpFlags.ACK) == TcpFlags.SYN:
            return {first.src: TcpState.CLOSED, first.dst: TcpState.LISTEN}
    return {a: TcpState.ESTABLISHED, b: TcpState.ESTABLISHED}


def record(
    port: Optional[int] = None,
    *,
    ports: Iterable[int] = (),
    interface: str = "lo",
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    payload_bytes: int = DEFAULT_PAYLOAD,
    max_seconds: float = 300.0,
    watch_states: bool = True,
    framing: Optional[Framing] = Framing(),
) -> Recording:
    """Record the TCP segments to or from *port* (and *ports*) on the
    loopback, as a :class:`Recording` that fills while the ``with`` block
    runs.

    Needs CAP_NET_RAW (root): otherwise raises
    :class:`CaptureNotPermitted`, which says so and points to
    :func:`pysockkit.lab.conversation` (unprivileged, in a private network
    namespace).  No port records every TCP segment on the interface.

    Bounds: *max_segments* segments are kept (the first ones; later ones
    are counted in ``rec.dropped``), each with up to *payload_bytes* bytes
    of payload; after *max_seconds* the capture stops by itself.  With
    *watch_states*, the state of both ends of the first 8 connections
    seen is sampled through sock_diag (5 kHz) and shown beside the
    segments; the rest is inferred from the segments (RFC 793).  *framing*
    names the frames in the ladder (None: don't).

    Example::

        >>> import pysockkit as sk
        >>> srv = sk.serve(("127.0.0.1", 0))                      # doctest: +SKIP
        >>> with sk.record(port=srv.address[1]) as rec:          # doctest: +SKIP
        ...     sk.call(srv.address, b"hi", timeout=1.0)
        >>> print(rec)                                           # doctest: +SKIP
    """
    wanted: list[int] = []
    for p in ([port] if port is not None else []) + list(ports):
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"ports must be ints, not {type(p).__name__}")
        if not 1 <= p <= 65535:
            raise ValueError(f"port {p} is out of range 1..65535")
        if p not in wanted:
            wanted.append(p)
    if len(wanted) > MAX_PORTS:
        raise ValueError(f"record() filters on at most {MAX_PORTS} ports, not {len(wanted)}")
    if isinstance(max_segments, bool) or not isinstance(max_segments, int) \
            or not 1 <= max_segments <= MAX_SEGMENTS:
        raise ValueError(f"max_segments must be an int in 1..{MAX_SEGMENTS}, "
                         f"not {max_segments!r}")
    if isinstance(payload_bytes, bool) or not isinstance(payload_bytes, int) \
            or not 0 <= payload_bytes <= MAX_PAYLOAD:
        raise ValueError(f"payload_bytes must be an int in 0..{MAX_PAYLOAD}, "
                         f"not {payload_bytes!r}")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) \
            or not 0 < max_seconds <= 1e6:
        raise ValueError(f"max_seconds must be a number of seconds in (0, 1e6], "
                         f"not {max_seconds!r}")
    try:
        cap = _native.Capture(ports=tuple(wanted), max_segments=max_segments,
                              payload_bytes=payload_bytes, max_seconds=float(max_seconds),
                              ifname=interface)
    except OSError as exc:
        raise _capture_error(exc) from None
    src = _LiveSource(cap, interval=0.0002, max_watched=8 if watch_states else 0)
    where = ", ".join(f"port {p}" for p in wanted) or "every TCP port"
    return Recording._live(src, name=f"{interface} {where}",
                           description=f"TCP segments on {interface}, {where}",
                           ports=tuple(wanted), framing=framing)

