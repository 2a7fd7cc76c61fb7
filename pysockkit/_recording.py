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
from ._enums import TcpState
from ._net import format_address
from ._types import Framing
from ._inference import StateChange, infer_states, merge_states
from ._segments import SegmentTable, _describe

__all__ = ["Recording", "RecordedConnection", "StateChange", "SegmentTable", "record"]

Address = tuple[str, int]
Pair = tuple[Address, Address]          # (local, remote) of one end
Observation = tuple[float, TcpState, str]  # (seconds, state, "TCP_INFO" / "sock_diag")



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

