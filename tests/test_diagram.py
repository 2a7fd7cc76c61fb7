"""The SVG TCP state diagram (pysockkit._diagram)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pysockkit import TcpState as S
from pysockkit._diagram import (
    DIAGRAM_EDGES,
    StateDiagram,
    state_diagram,
    state_diagram_svg,
)

NS = {"s": "http://www.w3.org/2000/svg"}
ELEVEN = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1",
          "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT")


def boxes(svg: str) -> dict[str, list[ET.Element]]:
    """state name -> the <rect>s of its boxes (CLOSED has two)."""
    out: dict[str, list[ET.Element]] = {}
    for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g"):
        title = g.find("s:title", NS)
        rect = g.find("s:rect", NS)
        if title is not None and rect is not None and title.text:
            out.setdefault(title.text.split(":")[0], []).append(rect)
    return out


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]


def test_all_eleven_states_and_the_classic_arrows() -> None:
    svg = state_diagram_svg()
    b = boxes(svg)
    assert set(b) == set(ELEVEN)
    assert len(b["CLOSED"]) == 2              # start and end, as in RFC 793
    labels = " | ".join(texts(svg))
    for word in ("snd SYN", "rcv SYN", "snd SYN+ACK", "rcv SYN+ACK", "snd ACK",
                 "rcv ACK of SYN", "snd FIN", "rcv FIN", "rcv FIN+ACK", "rcv ACK of FIN",
                 "2·MSL timeout", "listen()", "connect()", "close()"):
        assert word in labels, word
    edges = {(a, b) for a, b, _ in DIAGRAM_EDGES}
    for pair in [(S.CLOSED, S.LISTEN), (S.CLOSED, S.SYN_SENT), (S.LISTEN, S.SYN_RCVD),
                 (S.SYN_SENT, S.SYN_RCVD), (S.SYN_SENT, S.ESTABLISHED),
                 (S.SYN_RCVD, S.ESTABLISHED), (S.ESTABLISHED, S.FIN_WAIT_1),
                 (S.ESTABLISHED, S.CLOSE_WAIT), (S.FIN_WAIT_1, S.FIN_WAIT_2),
                 (S.FIN_WAIT_1, S.CLOSING), (S.FIN_WAIT_1, S.TIME_WAIT),
                 (S.FIN_WAIT_2, S.TIME_WAIT), (S.CLOSING, S.TIME_WAIT),
                 (S.CLOSE_WAIT, S.LAST_ACK), (S.LAST_ACK, S.CLOSED),
                 (S.TIME_WAIT, S.CLOSED)]:
        assert pair in edges, pair


def test_current_state_is_highlighted() -> None:
    plain = boxes(state_diagram_svg())
    hi = boxes(state_diagram_svg(current=S.CLOSE_WAIT))
    assert hi["CLOSE_WAIT"][0].get("fill") != plain["CLOSE_WAIT"][0].get("fill")
    assert hi["LISTEN"][0].get("fill") == plain["LISTEN"][0].get("fill")
    # any spelling of a state; Linux's request socket shows as SYN_RCVD
    assert state_diagram_svg(current="close-wait") == state_diagram_svg(current=S.CLOSE_WAIT)
    nsr = boxes(state_diagram_svg(current=S.NEW_SYN_RECV))
    assert nsr["SYN_RCVD"][0].get("fill") == hi["CLOSE_WAIT"][0].get("fill")


def test_path_is_drawn_numbered_and_gaps_are_marked() -> None:
    path = ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"]
    svg = state_diagram_svg(current="TIME_WAIT", path=path)
    t = texts(svg)
    assert ["1", "2", "3"] == [x for x in t if x.isdigit()]
    assert "(too brief to be seen)" not in t
    visited = boxes(svg)
    assert visited["FIN_WAIT_1"][0].get("stroke") != boxes(state_diagram_svg())[
        "FIN_WAIT_1"][0].get("stroke")
    # FIN_WAIT_1 missed by the sampler: inferred, dashed, labelled
    gap = state_diagram_svg(path=["ESTABLISHED", "FIN_WAIT_2", "TIME_WAIT"])
    assert "(too brief to be seen)" in texts(gap)
    assert boxes(gap)["FIN_WAIT_1"][0].get("stroke-dasharray")
    # an RST: no way through the diagram explains ESTABLISHED -> CLOSED
    rst = state_diagram_svg(path=["ESTABLISHED", "CLOSED"])
    assert "RST / abort" in texts(rst)
    # repeats are merged
    assert texts(state_diagram_svg(path=["LISTEN", "LISTEN", "LISTEN"])) == texts(
        state_diagram_svg(path=["LISTEN"]))


def test_svg_is_deterministic_and_well_formed() -> None:
    a = state_diagram_svg(current="LISTEN", path=["CLOSED", "LISTEN"])
    assert a == state_diagram_svg(current="LISTEN", path=["CLOSED", "LISTEN"])
    root = ET.fromstring(a)
    assert root.get("viewBox") and root.get("width")
    ids = [m.get("id") for m in root.iter("{http://www.w3.org/2000/svg}marker")]
    assert len(ids) == len(set(ids)) == 2
    with pytest.raises(ValueError):
        state_diagram_svg(current="NOT_A_STATE")


def test_state_diagram_object() -> None:
    d = state_diagram(S.LAST_ACK)
    assert isinstance(d, StateDiagram) and d.current is S.LAST_ACK
    assert d._repr_svg_() == d.svg
    d = state_diagram(trace=["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"])
    assert d.current is S.CLOSED and len(d.path) == 4
    d = state_diagram("CLOSE_WAIT", trace=["ESTABLISHED", "CLOSE_WAIT", "CLOSED"])
    assert d.current is S.CLOSE_WAIT
    with pytest.raises(TypeError):
        state_diagram(trace=42)
    assert "StateDiagram" in repr(d)
