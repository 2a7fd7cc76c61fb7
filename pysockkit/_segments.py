"""What the captured segments carry (frames, heartbeats, retransmissions,
keepalive probes) and the table of a recording's segments."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

from ._capture import Segment, TcpFlags
from ._display import html_table, text_table
from ._net import format_address
from ._types import Framing

__all__ = ["SegmentTable", "describe_segments"]

Address = tuple[str, int]
Pair = tuple[Address, Address]          # (local, remote) of one end

_MASK = 0xFFFFFFFF


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
