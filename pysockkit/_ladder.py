"""Ladder diagrams of a :class:`~pysockkit.Recording`: text and SVG.

A ladder (a sequence diagram) has one lifeline per end of a connection,
the client (or the side that opened it) on the left, and one arrow per
segment, in time order, from sender to receiver.  Beside each lifeline
stands the state that end is in: ``STATE`` where the kernel showed it (the
state sampler), ``(STATE)`` -- italic and hatched in the SVG -- where it
is inferred from the segment (RFC 793) because the sampler was too slow.
A segment dropped on arrival ends in an ``X``.

Example::

    >>> import pysockkit as sk
    >>> print(sk.lab.conversation("handshake"))        # doctest: +SKIP
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from ._enums import TcpState
from ._net import format_address

if TYPE_CHECKING:
    from ._recording import RecordedConnection, Recording, StateChange

__all__ = ["text_ladder", "svg_ladder"]


@dataclass
class _Row:
    """One line of a ladder: the initial states, a segment, or a state
    change the sampler saw between segments."""

    kind: str                     # "initial", "segment", "state"
    time: float
    index: Optional[int] = None   # segment index
    direction: int = 0            # +1 left->right, -1 right->left
    label: str = ""               # flags and numbers
    note: str = ""                # frames, retransmission, ...
    lost: bool = False
    left: list[StateChange] = field(default_factory=list)
    right: list[StateChange] = field(default_factory=list)


def _rows(rec: Recording, conn: RecordedConnection, numbers: str) -> list[_Row]:
    segs = rec.segments
    notes = rec.notes
    states = rec.states
    lost = set(rec.lost)
    a, b = conn.addresses
    isn = {a: "x", b: "y"}
    rows: list[_Row] = [_Row("initial", 0.0)]
    row_of: dict[int, int] = {}
    for i in conn.indices:
        s = segs[i]
        label = s.label(numbers, (isn.get(s.src, "x"), isn.get(s.dst, "y")))
        row_of[i] = len(rows)
        rows.append(_Row("segment", s.time, i, 1 if s.src == a else -1, label,
                         notes.get(i, ""), i in lost))
    floats: list[tuple[int, float, int, StateChange]] = []  # (after row, t, side, change)
    for side, name in ((0, conn.names[0]), (1, conn.names[1])):
        path = states.get(name, [])
        p = 0
        for k, ch in enumerate(path):
            if k == 0:
                (rows[0].left if side == 0 else rows[0].right).append(ch)
                continue
            if ch.segment is not None and ch.segment in row_of:
                r = row_of[ch.segment]
                (rows[r].left if side == 0 else rows[r].right).append(ch)
                p = max(p, r)
                continue
            while p + 1 < len(rows) and rows[p + 1].time <= ch.time:
                p += 1
            floats.append((p, ch.time, side, ch))
    out: list[_Row] = []
    for r, row in enumerate(rows):
        out.append(row)
        for _after, t, side, ch in sorted((f for f in floats if f[0] == r),
                                          key=lambda f: (f[1], f[2])):
            srow = _Row("state", t)
            (srow.left if side == 0 else srow.right).append(ch)
            out.append(srow)
    return out


def _state_text(ch: StateChange) -> str:
    return ch.state.name if ch.observed else f"({ch.state.name})"


# --------------------------------------------------------------------------
# Text


def text_ladder(rec: Recording, numbers: str = "relative", width: int = 100) -> str:
    """The text ladder of every connection of *rec*, within *width*
    columns (80 at least).  See :meth:`Recording.ladder`.

    Example::

        >>> from pysockkit._recording import Recording
        >>> print(text_ladder(Recording(name="empty", description="nothing",
        ...                             segments=())))  # doctest: +ELLIPSIS
        empty: nothing
        (no segment captured)
        STATE: seen by the kernel ...
    """
    if numbers not in ("relative", "absolute", "symbolic"):
        raise ValueError(f"numbers must be 'relative', 'absolute' or 'symbolic', "
                         f"not {numbers!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 80:
        raise ValueError(f"width must be an int >= 80, not {width!r}")
    tw, sw = 11, 13                       # time column, state column
    aw = width - (tw + 1) - (sw + 1) - 2 - (sw + 1)   # arrow field
    out = textwrap.wrap(f"{rec.name}: {rec.description}", width)
    conns = rec.connections
    if not conns:
        out.append("(no segment captured)")
    for n, conn in enumerate(conns):
        if len(conns) > 1:
            out.append(f"-- connection {n + 1} of {len(conns)}")
        lcol = tw + 1 + sw + 1            # the left lifeline's column
        heads = [tuple(format_address(x) for x in conn.addresses)]
        if conn.names == ("client", "server"):
            heads.insert(0, conn.names)
        for left, right in heads:
            right = right[:width - lcol - aw // 2]
            rcol = min(lcol + 1 + aw, width - len(right))   # the right lifeline's, or less
            out.append(left[-(lcol + 1):].rjust(lcol + 1).ljust(rcol) + right)
        for row in _rows(rec, conn, numbers):
            out.extend(_text_row(row, tw, sw, aw))
    foot = ("STATE: seen by the kernel (state sampler: TCP_INFO / sock_diag); (STATE): "
            "inferred from the segment (RFC 793), too brief for the sampler.  "
            + {"relative": "seq/ack relative to each side's first sequence number.",
               "absolute": "seq/ack as on the wire.",
               "symbolic": "x, y: the two initial sequence numbers."}[numbers])
    for text in [foot, rec.summary + ".", *_warnings(rec)]:
        out.extend(textwrap.wrap(text, width))
    return "\n".join(out)


def _warnings(rec: Recording) -> list[str]:
    st = rec._stats
    out = []
    if rec.dropped:
        out.append(f"!! {rec.dropped} segments were seen but not kept "
                   f"({st.get('ring_dropped', 0)} past the ring's {st.get('capacity', '?')}, "
                   f"{st.get('kernel_dropped', 0)} dropped by the kernel)")
    if st.get("timed_out"):
        out.append("!! the capture reached its max_seconds and stopped by itself")
    if st.get("unwatched"):
        out.append(f"!! {st['unwatched']} connections had no state sampler (states inferred)")
    return out


def _text_row(row: _Row, tw: int, sw: int, aw: int) -> list[str]:
    lefts = [_state_text(c) for c in row.left] or [""]
    rights = [_state_text(c) for c in row.right] or [""]
    t = "" if row.kind == "initial" else f"{row.time * 1e3:.3f} ms"
    more: list[str] = []
    if row.kind == "segment":
        room = aw - 5
        label = f"{row.label}: {row.note}" if row.note else row.label
        if len(label) > room:
            label = row.label[:room]
            more = textwrap.wrap(row.note, aw - 6)
        if row.direction > 0:
            body = f"--{label} ".ljust(aw - 1, "-")
            arrow = body[:-3] + " X " if row.lost else body + ">"
            arrow = arrow.ljust(aw)
        else:
            arrow = (f"  X -{label} " if row.lost else f"<--{label} ").ljust(aw, "-")
    else:
        arrow = " " * aw
    lines = [f"{t:>{tw}} {lefts[0]:>{sw}} |{arrow}| {rights[0]}".rstrip()]
    for k in range(1, max(len(lefts), len(rights), len(more) + 1)):
        lt = lefts[k] if k < len(lefts) else ""
        rt = rights[k] if k < len(rights) else ""
        mid = ""
        if k - 1 < len(more):
            mid = ("   (" if k == 1 else "    ") + more[k - 1] + (")" if k == len(more) else "")
        if len(mid) > aw:
            mid = mid[:aw]
        lines.append(f"{'':>{tw}} {lt:>{sw}} |{mid:<{aw}}| {rt}".rstrip())
    return lines


# --------------------------------------------------------------------------
# SVG

_FONT = "Helvetica, Arial, sans-serif"
_MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
_C_TEXT = "#222"
_C_LABEL = "#444"
_C_LINE = "#555"
_C_LOST = "#c92a2a"
_HALO = 'stroke="#fff" stroke-width="3" paint-order="stroke"'
_COLORS = {
    TcpState.CLOSED: "#dee2e6",
    TcpState.LISTEN: "#a5d8ff",
    TcpState.SYN_SENT: "#ffe066",
    TcpState.SYN_RCVD: "#ffe066",
    TcpState.NEW_SYN_RECV: "#ffe066",
    TcpState.ESTABLISHED: "#8ce99a",
    TcpState.FIN_WAIT_1: "#ffc078",
    TcpState.FIN_WAIT_2: "#ffc078",
    TcpState.CLOSING: "#ffa94d",
    TcpState.CLOSE_WAIT: "#faa2c1",
    TcpState.LAST_ACK: "#faa2c1",
    TcpState.TIME_WAIT: "#b197fc",
}

_W = 900
_XL, _XR = 300, 700         # lifelines
_ROW, _SLANT, _GAP = 34, 12, 30


def svg_ladder(rec: Recording, numbers: str = "relative") -> str:
    """The SVG ladder of every connection of *rec*.  See
    :meth:`Recording.svg`.

    Example::

        >>> from pysockkit._recording import Recording
        >>> svg_ladder(Recording(name="x", description="y", segments=())).startswith("<svg")
        True
    """
    body: list[str] = []
    body.append(f'<text x="{_W / 2}" y="22" text-anchor="middle" font-size="15" '
                f'font-weight="bold" fill="{_C_TEXT}">{html.escape(rec.name)}</text>')
    y = 40
    for line in textwrap.wrap(rec.description, 120):
        body.append(f'<text x="{_W / 2}" y="{y}" text-anchor="middle" font-size="12" '
                    f'fill="{_C_LABEL}">{html.escape(line)}</text>')
        y += 15
    y += 12
    conns = rec.connections
    if not conns:
        body.append(f'<text x="{_W / 2}" y="{y + 10}" text-anchor="middle" '
                    f'fill="{_C_LABEL}">(no segment captured)</text>')
        y += 30
    for n, conn in enumerate(conns):
        if len(conns) > 1:
            body.append(f'<text x="10" y="{y}" font-weight="bold" fill="{_C_TEXT}">'
                        f'connection {n + 1} of {len(conns)}</text>')
            y += 16
        y = _svg_connection(body, rec, conn, numbers, y)
    y = _svg_legend(body, rec, y + 8)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{y}" '
            f'viewBox="0 0 {_W} {y}" font-family="{_FONT}" font-size="12">'
            '<defs>'
            f'<marker id="sk-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
            f'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{_C_LINE}"/></marker>'
            '<pattern id="sk-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
            f'<line x1="0" y1="0" x2="0" y2="6" stroke="#868e96" stroke-width="3"/></pattern>'
            '</defs>'
            f'<rect x="0" y="0" width="{_W}" height="{y}" fill="#fff"/>'
            + "".join(body) + "</svg>")


def _svg_connection(body: list[str], rec: Recording, conn: RecordedConnection,
                    numbers: str, y0: int) -> int:
    rows = _rows(rec, conn, numbers)
    for x, name, addr, anchor in ((_XL, conn.names[0], conn.addresses[0], "middle"),
                                  (_XR, conn.names[1], conn.addresses[1], "middle")):
        if conn.names != ("client", "server"):
            name = format_address(addr)
        body.append(f'<text x="{x}" y="{y0 + 4}" text-anchor="{anchor}" font-weight="bold" '
                    f'fill="{_C_TEXT}">{html.escape(name)}</text>')
        if conn.names == ("client", "server"):
            body.append(f'<text x="{x}" y="{y0 + 18}" text-anchor="{anchor}" font-size="11" '
                        f'fill="{_C_LABEL}">{html.escape(format_address(addr))}</text>')
    y = y0 + 34
    # y of each row, with a break where nothing happened for a long while
    ys: list[float] = []
    breaks: list[tuple[float, float]] = []
    prev_t: Optional[float] = None
    for row in rows:
        if prev_t is not None and row.kind != "initial" and row.time - prev_t > 0.05:
            breaks.append((y + _GAP / 2 - 10, row.time - prev_t))
            y += _GAP
        ys.append(y)
        if row.kind != "initial":
            prev_t = row.time
        else:
            prev_t = 0.0
        stacked = 14 * max(0, len(row.left) - 1, len(row.right) - 1)
        y += ((_ROW + (14 if row.note else 0)) if row.kind == "segment" else 22) + stacked
    end_y = y
    # state bars and names, per side
    for side, x in ((0, _XL), (1, _XR)):
        marks: list[tuple[float, StateChange]] = []
        for row, ry in zip(rows, ys):
            changes = row.left if side == 0 else row.right
            at = ry
            if row.kind == "segment" and ((row.direction > 0) == (side == 1)):
                at = ry + _SLANT   # the receiver changes when the segment arrives
            for k, ch in enumerate(changes):
                marks.append((at + 14 * k, ch))
        for k, (my, ch) in enumerate(marks):
            ny = marks[k + 1][0] if k + 1 < len(marks) else end_y
            color = _COLORS.get(ch.state, "#e9ecef")
            fill = color if ch.observed else "url(#sk-hatch)"
            dash = "" if ch.observed else ' stroke-dasharray="3,2"'
            tip = (f"{ch.state.name}: seen by {ch.by} at {ch.time * 1e3:.3f} ms"
                   if ch.observed else
                   f"{ch.state.name}: inferred from the segment ({ch.by}); "
                   "too brief for the sampler")
            body.append(f'<rect x="{x - 6}" y="{my:.1f}" width="12" height="{max(1.0, ny - my):.1f}" '
                        f'fill="{fill}" stroke="{color if ch.observed else "#868e96"}"{dash}>'
                        f'<title>{html.escape(tip)}</title></rect>')
            if not ch.observed:
                body.append(f'<rect x="{x - 2}" y="{my:.1f}" width="4" '
                            f'height="{max(1.0, ny - my):.1f}" fill="{color}"/>')
            tx, anchor = (x - 12, "end") if side == 0 else (x + 12, "start")
            style = ('font-weight="bold"' if ch.observed
                     else f'font-style="italic" fill-opacity="0.9"')
            text = ch.state.name if ch.observed else f"({ch.state.name})"
            body.append(f'<text x="{tx}" y="{my + 11:.1f}" text-anchor="{anchor}" {style} '
                        f'fill="{_C_TEXT}" {_HALO}>{html.escape(text)}'
                        f'<title>{html.escape(tip)}</title></text>')
    # lifelines (under the arrows, over nothing)
    for x in (_XL, _XR):
        body.append(f'<line x1="{x}" y1="{y0 + 24}" x2="{x}" y2="{end_y}" stroke="{_C_LINE}" '
                    f'stroke-width="1"/>')
    for by, dt in breaks:
        body.append(f'<text x="{(_XL + _XR) / 2}" y="{by + 4:.1f}" text-anchor="middle" '
                    f'font-size="11" fill="{_C_LABEL}" font-style="italic">'
                    f'... {dt * 1e3:.1f} ms later ...</text>')
    # arrows and times
    for row, ry in zip(rows, ys):
        if row.kind == "initial":
            continue
        body.append(f'<text x="70" y="{ry + 4:.1f}" text-anchor="end" font-size="11" '
                    f'fill="{_C_LABEL}">{row.time * 1e3:.3f} ms</text>')
        if row.kind != "segment":
            continue
        x1, x2 = (_XL + 7, _XR - 7) if row.direction > 0 else (_XR - 7, _XL + 7)
        y1, y2 = ry, ry + _SLANT
        if row.lost:
            xm = x1 + (x2 - x1) * 0.72
            ym = y1 + (y2 - y1) * 0.72
            body.append(f'<line x1="{x1}" y1="{y1:.1f}" x2="{xm:.1f}" y2="{ym:.1f}" '
                        f'stroke="{_C_LOST}" stroke-width="1.6" stroke-dasharray="5,3"/>')
            body.append(f'<path d="M{xm - 6:.1f},{ym - 6:.1f} L{xm + 6:.1f},{ym + 6:.1f} '
                        f'M{xm - 6:.1f},{ym + 6:.1f} L{xm + 6:.1f},{ym - 6:.1f}" '
                        f'stroke="{_C_LOST}" stroke-width="2.4"/>')
        else:
            body.append(f'<line x1="{x1}" y1="{y1:.1f}" x2="{x2}" y2="{y2:.1f}" '
                        f'stroke="{_C_LINE}" stroke-width="1.4" marker-end="url(#sk-arrow)"/>')
        flags, _, rest = row.label.partition(" ")
        color = _C_LOST if row.lost else _C_TEXT
        body.append(f'<text x="{(_XL + _XR) / 2}" y="{ry - 1:.1f}" text-anchor="middle" '
                    f'font-family="{_MONO}" font-size="11" fill="{color}" '
                    f'{_HALO}><tspan font-weight="bold">{html.escape(flags)}</tspan> '
                    f'{html.escape(rest)}</text>')
        if row.note:
            body.append(f'<text x="{(_XL + _XR) / 2}" y="{ry + _SLANT + 12:.1f}" '
                        f'text-anchor="middle" font-size="10.5" font-style="italic" '
                        f'fill="{_C_LOST if row.lost else _C_LABEL}" {_HALO}>'
                        f'{html.escape(row.note)}</text>')
    return end_y


def _svg_legend(body: list[str], rec: Recording, y: int) -> int:
    body.append(f'<rect x="20" y="{y}" width="12" height="14" fill="{_COLORS[TcpState.ESTABLISHED]}"/>')
    body.append(f'<text x="38" y="{y + 11}" font-size="11" fill="{_C_LABEL}"><tspan '
                f'font-weight="bold">STATE</tspan>: seen by the kernel (state sampler: '
                f'TCP_INFO / sock_diag)</text>')
    y += 20
    body.append(f'<rect x="20" y="{y}" width="12" height="14" fill="url(#sk-hatch)" '
                f'stroke="#868e96" stroke-dasharray="3,2"/>')
    body.append(f'<text x="38" y="{y + 11}" font-size="11" fill="{_C_LABEL}"><tspan '
                f'font-style="italic">(STATE)</tspan>: inferred from the segment it stands '
                f'beside (RFC 793); the sampler was too slow to see it</text>')
    y += 22
    body.append(f'<text x="20" y="{y + 8}" font-size="11" fill="{_C_LABEL}">'
                f'{html.escape(rec.summary)}</text>')
    y += 16
    for w in _warnings(rec):
        body.append(f'<text x="20" y="{y + 8}" font-size="11" fill="{_C_LOST}">'
                    f'{html.escape(w)}</text>')
        y += 16
    return y + 8
