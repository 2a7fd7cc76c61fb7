"""The TCP state diagram as SVG, with a state highlighted and a path drawn.

The layout is the classic one of RFC 793 (figure 6, as revised in RFC 9293):
CLOSED at the top, the three-way handshake (LISTEN, SYN_RCVD, SYN_SENT) down
to ESTABLISHED, the active close on the left (FIN_WAIT_1, FIN_WAIT_2,
CLOSING, TIME_WAIT) and the passive close on the right (CLOSE_WAIT,
LAST_ACK).  As in the RFC, CLOSED is drawn twice: where connections start
(top) and where they end (bottom right).  Each arrow is labelled with the
event that fires it, the socket call or the segment received, and what TCP
sends in reply ("rcv FIN / snd ACK").

A *path* (the states a connection went through, for instance
``StateTrace.states``) is drawn over the diagram in colour, numbered in
order.  Two states in a row with no arrow between them mean the sampler
missed a brief state: the shortest way through the diagram is drawn dashed
and the states it passes are outlined dashed ("not seen").  A jump to
CLOSED that no short way explains is drawn as a dashed "RST / abort".

Example::

    >>> from pysockkit._diagram import state_diagram_svg
    >>> from pysockkit import TcpState
    >>> svg = state_diagram_svg(current=TcpState.TIME_WAIT,
    ...                         path=["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
    ...                               "TIME_WAIT"])
    >>> svg.startswith("<svg") and "TIME_WAIT" in svg
    True
"""

from __future__ import annotations

import hashlib
import html
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Optional

from ._enums import StateLike, TcpState, as_state

__all__ = ["state_diagram_svg", "StateDiagram", "state_diagram", "DIAGRAM_EDGES"]


# ---------------------------------------------------------------- layout

_W, _H = 800, 840          # canvas
_BW, _BH = 130, 44         # box size
_HW, _HH = _BW / 2, _BH / 2

# node id -> (state, centre x, centre y, label lines)
_NODES: dict[str, tuple[TcpState, float, float, tuple[str, ...]]] = {
    "CLOSED": (TcpState.CLOSED, 400, 40, ("CLOSED",)),
    "LISTEN": (TcpState.LISTEN, 400, 160, ("LISTEN",)),
    "SYN_RCVD": (TcpState.SYN_RCVD, 130, 280, ("SYN_RCVD",)),
    "SYN_SENT": (TcpState.SYN_SENT, 670, 280, ("SYN_SENT",)),
    "ESTABLISHED": (TcpState.ESTABLISHED, 400, 400, ("ESTABLISHED",)),
    "FIN_WAIT_1": (TcpState.FIN_WAIT_1, 130, 520, ("FIN_WAIT_1",)),
    "CLOSE_WAIT": (TcpState.CLOSE_WAIT, 670, 520, ("CLOSE_WAIT",)),
    "FIN_WAIT_2": (TcpState.FIN_WAIT_2, 130, 650, ("FIN_WAIT_2",)),
    "CLOSING": (TcpState.CLOSING, 400, 650, ("CLOSING",)),
    "LAST_ACK": (TcpState.LAST_ACK, 670, 650, ("LAST_ACK",)),
    "TIME_WAIT": (TcpState.TIME_WAIT, 400, 780, ("TIME_WAIT",)),
    "CLOSED_END": (TcpState.CLOSED, 670, 780, ("CLOSED",)),
}

# (from node, to node, label lines, label x, label y, text-anchor,
#  waypoints, start dx, end dx)
_Edge = tuple[str, str, tuple[str, ...], float, float, str,
              tuple[tuple[float, float], ...], float, float]

_EDGES: tuple[_Edge, ...] = (
    # opening
    ("CLOSED", "LISTEN", ("listen()", "passive open"), 386, 96, "end", (), -14, -14),
    ("LISTEN", "CLOSED", ("close()",), 414, 96, "start", (), 14, 14),
    ("CLOSED", "SYN_SENT", ("connect()", "snd SYN"), 694, 130, "start",
     ((685, 33),), 0, 15),
    ("SYN_SENT", "CLOSED", ("close() or", "SYN timeout"), 646, 130, "end",
     ((655, 48),), -15, 0),
    ("LISTEN", "SYN_RCVD", ("rcv SYN", "snd SYN+ACK"), 250, 196, "middle", (), 0, 0),
    ("SYN_SENT", "SYN_RCVD", ("rcv SYN (simultaneous open)", "snd SYN+ACK"),
     400, 258, "middle", (), 0, 0),
    ("SYN_RCVD", "ESTABLISHED", ("rcv ACK of SYN",), 230, 356, "end", (), 0, 0),
    ("SYN_SENT", "ESTABLISHED", ("rcv SYN+ACK", "snd ACK"), 570, 356, "start", (), 0, 0),
    ("SYN_RCVD", "FIN_WAIT_1", ("close()", "snd FIN"), 122, 396, "end", (), 0, 0),
    # closing
    ("ESTABLISHED", "FIN_WAIT_1", ("close() / shutdown(WR)", "snd FIN"),
     252, 446, "end", (), 0, 0),
    ("ESTABLISHED", "CLOSE_WAIT", ("rcv FIN", "snd ACK"), 550, 446, "start", (), 0, 0),
    ("FIN_WAIT_1", "FIN_WAIT_2", ("rcv ACK of FIN",), 122, 590, "end", (), 0, 0),
    ("FIN_WAIT_1", "CLOSING", ("rcv FIN", "snd ACK"), 300, 556, "start", (), 0, 0),
    ("FIN_WAIT_1", "TIME_WAIT", ("rcv FIN+ACK", "snd ACK"), 262, 708, "end", (), 0, 0),
    ("FIN_WAIT_2", "TIME_WAIT", ("rcv FIN", "snd ACK"), 240, 764, "middle",
     ((130, 780),), 0, 0),
    ("CLOSING", "TIME_WAIT", ("rcv ACK of FIN",), 408, 718, "start", (), 0, 0),
    ("CLOSE_WAIT", "LAST_ACK", ("close()", "snd FIN"), 678, 584, "start", (), 0, 0),
    ("LAST_ACK", "CLOSED_END", ("rcv ACK of FIN",), 678, 718, "start", (), 0, 0),
    ("TIME_WAIT", "CLOSED_END", ("2·MSL timeout",), 535, 770, "middle", (), 0, 0),
)

#: The arrows of the diagram as (from state, to state, label) triples.
DIAGRAM_EDGES: tuple[tuple[TcpState, TcpState, str], ...] = tuple(
    (_NODES[a][0], _NODES[b][0], " / ".join(lab)) for a, b, lab, *_ in _EDGES
)

_EDGE_BY_NODES = {(e[0], e[1]): e for e in _EDGES}

_C_LINE = "#555"
_C_PATH = "#d9480f"
_C_BOX = "#fff"
_C_VISITED = "#ffe8cc"
_C_CURRENT = "#fd7e14"
_C_TEXT = "#222"
_C_LABEL = "#444"
_HALO = 'stroke="#fff" stroke-width="3" paint-order="stroke"'  # readable over lines

# ------------------------------------------------------------- geometry


def _clip(cx: float, cy: float, px: float, py: float, qx: float, qy: float
          ) -> tuple[float, float]:
    """Where the ray from p (inside the box centred on c) towards q leaves
    the box."""
    dx, dy = qx - px, qy - py
    ts = []
    if dx:
        ts.append((_HW - (px - cx) * (1 if dx > 0 else -1)) / abs(dx))
    if dy:
        ts.append((_HH - (py - cy) * (1 if dy > 0 else -1)) / abs(dy))
    t = min(ts) if ts else 0.0
    return px + t * dx, py + t * dy


def _edge_points(a: str, b: str, waypoints: Sequence[tuple[float, float]],
                 sdx: float, edx: float) -> list[tuple[float, float]]:
    _, ax, ay, _ = _NODES[a]
    _, bx, by, _ = _NODES[b]
    pts = [(ax + sdx, ay), *waypoints, (bx + edx, by)]
    first = _clip(ax, ay, pts[0][0], pts[0][1], pts[1][0], pts[1][1])
    last = _clip(bx, by, pts[-1][0], pts[-1][1], pts[-2][0], pts[-2][1])
    return [first, *pts[1:-1], last]


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _polyline(pts: Sequence[tuple[float, float]], attrs: str) -> str:
    d = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in pts)
    return f'<polyline points="{d}" fill="none" {attrs}/>'


def _point_along(pts: Sequence[tuple[float, float]], frac: float) -> tuple[float, float]:
    segs = [(pts[i], pts[i + 1]) for i in range(len(pts) - 1)]
    lens = [((q[0] - p[0]) ** 2 + (q[1] - p[1]) ** 2) ** 0.5 for p, q in segs]
    goal = sum(lens) * frac
    for (p, q), ln in zip(segs, lens):
        if goal <= ln and ln > 0:
            f = goal / ln
            return p[0] + f * (q[0] - p[0]), p[1] + f * (q[1] - p[1])
        goal -= ln
    return pts[-1]


# ------------------------------------------------------------ path logic


def _to_state(s: StateLike) -> TcpState:
    st = as_state(s)
    # Linux's request socket is SYN_RCVD on the diagram
    return TcpState.SYN_RCVD if st is TcpState.NEW_SYN_RECV else st


def _nodes_of(s: TcpState) -> list[str]:
    return [n for n, (st, *_rest) in _NODES.items() if st is s]


def _shortest(a: str, bs: Sequence[str]) -> Optional[list[str]]:
    """Shortest node path from a to any of bs along the arrows (BFS)."""
    prev: dict[str, Optional[str]] = {a: None}
    todo = deque([a])
    while todo:
        n = todo.popleft()
        if n in bs and n != a:
            out = [n]
            p = prev[n]
            while p is not None:
                out.append(p)
                p = prev[p]
            return out[::-1]
        for x, y, *_ in _EDGES:
            if x == n and y not in prev:
                prev[y] = n
                todo.append(y)
    return None


# One leg of a drawn path: (node path, kind) with kind "seen" (one arrow),
# "inferred" (several arrows; the states between were not seen) or "jump"
# (no arrow: a dashed straight line, e.g. an RST).
_Leg = tuple[list[str], str]


def _legs(path: Sequence[TcpState]) -> tuple[list[_Leg], list[str]]:
    """Turn a state path into drawable legs and the node visited last."""
    legs: list[_Leg] = []
    states = [s for i, s in enumerate(path) if i == 0 or s is not path[i - 1]]
    if not states:
        return legs, []
    here = _nodes_of(states[0])[:1]  # CLOSED at the start: the top one
    visited = list(here)
    for s in states[1:]:
        targets = _nodes_of(s)
        best: Optional[list[str]] = None
        for src in here:
            p = _shortest(src, targets)
            if p is not None and (best is None or len(p) < len(best)):
                best = p
        if best is not None and len(best) == 2:
            legs.append((best, "seen"))
        elif best is not None and len(best) == 3:
            legs.append((best, "inferred"))  # one brief state not sampled
        else:
            dst = targets[-1] if s is TcpState.CLOSED else targets[0]
            best = [here[0], dst]
            legs.append((best, "jump"))
        here = [best[-1]]
        visited.append(best[-1])
    return legs, visited


# -------------------------------------------------------------- drawing


def state_diagram_svg(
    current: Optional[StateLike] = None,
    path: Optional[Iterable[StateLike]] = None,
    *,
    title: Optional[str] = None,
) -> str:
    """The TCP state diagram as an SVG document (a ``str``).

    All eleven states are boxes (CLOSED twice, at the start and at the end,
    as in RFC 793); the arrows of the handshake and the close are
    labelled with their events (``connect()``, ``rcv SYN``, ``rcv FIN+ACK``,
    ...) and what TCP sends (``snd SYN+ACK``, ``snd ACK``, ``snd FIN``).

    - *current*: a state (:class:`TcpState`, number or name) to highlight.
    - *path*: states in the order a connection went through them (repeats
      are merged); drawn in colour and numbered.  Gaps (a state too brief
      to be sampled) are drawn dashed along the shortest way; a jump to
      CLOSED with no short way (an RST) as a dashed straight line.
    - *title*: a caption above the diagram.

    Example::

        >>> svg = state_diagram_svg("ESTABLISHED")
        >>> svg.count("<rect") >= 12   # 12 boxes (+ the background)
        True
        >>> "rcv SYN+ACK" in svg and "snd FIN" in svg
        True
        >>> import xml.etree.ElementTree as ET
        >>> ET.fromstring(svg).tag
        '{http://www.w3.org/2000/svg}svg'
    """
    cur = _to_state(current) if current is not None else None
    states = [_to_state(s) for s in path] if path is not None else []
    legs, visited = _legs(states)
    key = hashlib.sha1(repr((cur, states, title)).encode()).hexdigest()[:8]
    m_line, m_path = f"skA{key}", f"skP{key}"
    top = 30 if title else 0
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H + top}" '
        f'viewBox="0 {-top} {_W} {_H + top}" font-family="Helvetica, Arial, sans-serif" '
        f'font-size="11">',
        f'<rect x="0" y="{-top}" width="{_W}" height="{_H + top}" fill="#fff"/>',
        "<defs>",
        f'<marker id="{m_line}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{_C_LINE}"/></marker>',
        f'<marker id="{m_path}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        f'markerHeight="6" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        f'fill="{_C_PATH}"/></marker>',
        "</defs>",
    ]
    if title:
        out.append(f'<text x="{_W / 2}" y="-10" text-anchor="middle" font-size="14" '
                   f'font-weight="bold" fill="{_C_TEXT}">{html.escape(title)}</text>')
    # arrows and their labels
    for a, b, label, lx, ly, anchor, way, sdx, edx in _EDGES:
        pts = _edge_points(a, b, way, sdx, edx)
        out.append(_polyline(pts, f'stroke="{_C_LINE}" stroke-width="1.2" '
                                  f'marker-end="url(#{m_line})"'))
        for i, line in enumerate(label):
            out.append(f'<text x="{_fmt(lx)}" y="{_fmt(ly + 12 * i)}" '
                       f'text-anchor="{anchor}" fill="{_C_LABEL}" {_HALO}>'
                       f'{html.escape(line)}</text>')
    # boxes
    inferred = {n for nodes, kind in legs if kind == "inferred" for n in nodes[1:-1]}
    cur_node = None
    if cur is not None:
        nodes = _nodes_of(cur)
        if visited and visited[-1] in nodes:
            cur_node = visited[-1]
        elif nodes:
            cur_node = nodes[-1] if (cur is TcpState.CLOSED and visited) else nodes[0]
    for n, (st, x, y, lines) in _NODES.items():
        fill = _C_CURRENT if n == cur_node else (_C_VISITED if n in visited else _C_BOX)
        stroke = _C_PATH if (n in visited or n in inferred) else _C_TEXT
        dash = ' stroke-dasharray="5,3"' if n in inferred and n not in visited else ""
        weight = "bold" if n == cur_node else "normal"
        tip = html.escape(f"{st.name}: {st.description}")
        out.append(f'<g><title>{tip}</title><rect x="{_fmt(x - _HW)}" y="{_fmt(y - _HH)}" '
                   f'width="{_BW}" height="{_BH}" rx="6" fill="{fill}" stroke="{stroke}" '
                   f'stroke-width="{2 if n in visited or n == cur_node else 1.3}"{dash}/>')
        unseen = n in inferred and n not in visited
        for i, line in enumerate(lines):
            out.append(f'<text x="{_fmt(x)}" y="{_fmt(y + (0 if unseen else 4) + 13 * i)}" '
                       f'text-anchor="middle" font-size="13" font-weight="{weight}" '
                       f'fill="{_C_TEXT}">{html.escape(line)}</text>')
        if unseen:
            out.append(f'<text x="{_fmt(x)}" y="{_fmt(y + 14)}" text-anchor="middle" '
                       f'font-size="9" fill="{_C_PATH}">(too brief to be seen)</text>')
        out.append("</g>")
    # the path on top
    for step, (nodes, kind) in enumerate(legs, 1):
        if kind == "jump":
            pts = _edge_points(nodes[0], nodes[1], (), 0, 0)
            legpts = [pts]
        else:
            legpts = []
            for a, b in zip(nodes, nodes[1:]):
                e = _EDGE_BY_NODES[(a, b)]
                legpts.append(_edge_points(a, b, e[6], e[7], e[8]))
        dash = ' stroke-dasharray="6,4"' if kind != "seen" else ""
        for pts in legpts:
            out.append(_polyline(pts, f'stroke="{_C_PATH}" stroke-width="3" '
                                      f'stroke-opacity="0.85"{dash} '
                                      f'marker-end="url(#{m_path})"'))
        bx, by = _point_along(legpts[0], 0.3)
        out.append(f'<circle cx="{_fmt(bx)}" cy="{_fmt(by)}" r="8" fill="{_C_PATH}"/>'
                   f'<text x="{_fmt(bx)}" y="{_fmt(by + 3.5)}" text-anchor="middle" '
                   f'font-size="10" font-weight="bold" fill="#fff">{step}</text>')
        if kind == "jump":
            mx, my = _point_along(legpts[0], 0.6)
            out.append(f'<text x="{_fmt(mx + 6)}" y="{_fmt(my)}" fill="{_C_PATH}" '
                       f'font-size="10" {_HALO}>RST / abort</text>')
    out.append(f'<text x="10" y="{_H - 8}" fill="{_C_LABEL}" font-size="10">'
               "any state: rcv RST or abort (SO_LINGER 0) → CLOSED · "
               "TIME_WAIT lasts 2·MSL (60 s on Linux) · "
               "Linux's NEW_SYN_RECV request socket is shown as SYN_RCVD</text>")
    out.append("</svg>")
    return "\n".join(out)


class StateDiagram:
    """The TCP state diagram, displayable in Jupyter (``_repr_svg_``).

    Make one with :func:`state_diagram`.  ``svg`` is the SVG text;
    :meth:`save` writes it to a file.

    Example::

        >>> d = StateDiagram(current="LISTEN")
        >>> d.current
        <TcpState.LISTEN: 10>
        >>> d._repr_svg_().startswith("<svg")
        True
    """

    def __init__(
        self,
        current: Optional[StateLike] = None,
        path: Optional[Iterable[StateLike]] = None,
        title: Optional[str] = None,
    ) -> None:
        self.current: Optional[TcpState] = _to_state(current) if current is not None else None
        self.path: list[TcpState] = [_to_state(s) for s in path] if path is not None else []
        self.title = title

    @property
    def svg(self) -> str:
        """The diagram as an SVG document.

        Example::

            >>> StateDiagram().svg.endswith("</svg>")
            True
        """
        return state_diagram_svg(self.current, self.path, title=self.title)

    def save(self, filename: str) -> None:
        """Write the SVG to *filename*.

        Example::

            >>> import tempfile, os
            >>> with tempfile.TemporaryDirectory() as d:
            ...     StateDiagram().save(os.path.join(d, "tcp.svg"))
        """
        with open(filename, "w", encoding="utf-8") as f:
            f.write(self.svg)

    def _repr_svg_(self) -> str:
        return self.svg

    def __repr__(self) -> str:
        cur = self.current.name if self.current is not None else None
        return f"<StateDiagram current={cur} path={[s.name for s in self.path]}>"


def state_diagram(current: Optional[StateLike] = None, trace: object = None) -> StateDiagram:
    """The TCP state diagram, for display in a notebook.

    *current* highlights a state.  *trace* (a :class:`StateTrace` from
    :func:`pysockkit.watch`, or any sequence of states) draws the path the
    connection took; the trace's latest state is then highlighted unless
    *current* says otherwise.

    Example::

        >>> import pysockkit as sk
        >>> d = state_diagram(sk.TcpState.CLOSE_WAIT)
        >>> d                                          # doctest: +ELLIPSIS
        <StateDiagram current=CLOSE_WAIT path=[]>
        >>> d = state_diagram(trace=["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"])
        >>> d.current, len(d.path)
        (<TcpState.CLOSED: 7>, 4)
    """
    if trace is None:
        return StateDiagram(current)
    make = getattr(trace, "diagram", None)
    if callable(make):
        d = make()
        if not isinstance(d, StateDiagram):
            raise TypeError(f"{trace!r}.diagram() did not return a StateDiagram")
    elif isinstance(trace, Iterable):
        path = list(trace)
        d = StateDiagram(path[-1] if path else None, path)
    else:
        raise TypeError(f"trace must be a StateTrace or a sequence of states, not {trace!r}")
    if current is not None:
        d.current = _to_state(current)
    return d
