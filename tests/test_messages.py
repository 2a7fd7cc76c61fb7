"""What users read: error messages of the C core, never cut mid-word and
naming public classes (issue 11, items 7 and 8), and TcpState printed by
name (item 6).

The core keeps each error in a fixed ``char[SK_ERRMSG_MAX]`` (csrc/core/sk.h).
Every format string it passes to ``sk_err_set`` must fit with its longest
numbers; one that ever does not is cut at a word boundary with "..."
(tests/c/test_err.c checks that rule on its own).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

import pysockkit as sk
from helpers import REPO_ROOT, STEP_TIMEOUT, encode_header

CSRC = REPO_ROOT / "csrc"

# The widest text each printf conversion the core uses can produce.
_WIDTH = {"d": 11, "i": 11, "u": 10, "x": 8, "c": 1, "%": 1, "p": 18, "g": 13}
_WIDE_LEN = ("l", "ll", "z", "j", "t")
# A bare %s in an sk_err_set format is a fixed suffix chosen by the caller
# (frame.c: " with the top bits kept for extensions"); sk_err_sys's own
# "%s: %s" is a syscall name and strerror, well under this too.
_BARE_S = 48


def _errmsg_max() -> int:
    m = re.search(r"#define SK_ERRMSG_MAX (\d+)", (CSRC / "core" / "sk.h").read_text())
    assert m, "SK_ERRMSG_MAX not found in csrc/core/sk.h"
    return int(m.group(1))


def _formats() -> list[tuple[str, str]]:
    """(file:line, format) of every sk_err_set call in the core."""
    call = re.compile(r'sk_err_set\(\s*[^,]+,\s*[A-Z_]+\s*,\s*((?:"(?:[^"\\]|\\.)*"\s*)+)')
    out = []
    for path in sorted(CSRC.rglob("*.c")):
        src = path.read_text()
        for m in call.finditer(src):
            fmt = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1)))
            line = src.count("\n", 0, m.start()) + 1
            out.append((f"{path.relative_to(CSRC)}:{line}", fmt.encode().decode("unicode_escape")))
    return out


def _worst_case(fmt: str) -> int:
    spec = re.compile(r"%([-+ #0]*)(\d*)(?:\.(\d+))?(hh|h|ll|l|z|j|t)?([diouxXeEfgGcsp%])")
    n = 0
    pos = 0
    for m in spec.finditer(fmt):
        n += m.start() - pos
        pos = m.end()
        width, prec, length, conv = m.group(2), m.group(3), m.group(4), m.group(5)
        if conv == "s":
            w = int(prec) if prec else _BARE_S
        elif conv in "eEfFgG":
            w = int(prec) + 8 if prec else _WIDTH["g"]
        elif length in _WIDE_LEN:
            w = 20
        else:
            w = _WIDTH.get(conv.lower(), 20)
        n += max(w, int(width or 0))
    return n + len(fmt) - pos


def test_every_core_message_fits_its_record() -> None:
    limit = _errmsg_max() - 1
    found = _formats()
    assert len(found) > 30, "the sk_err_set scan found too few calls"
    too_long = [(where, _worst_case(f), f) for where, f in found if _worst_case(f) > limit]
    assert not too_long, f"messages that can exceed SK_ERRMSG_MAX - 1 = {limit}: {too_long}"


def test_issue_example_is_whole() -> None:
    with pytest.raises(sk.FrameTooLarge) as info:
        sk.Decoder(header_size=4, max_frame=1000).feed(b"\0\0\x13\x88")
    msg = str(info.value)
    assert msg.endswith("(or raise Framing.max_frame if the peer is right)"), msg
    assert "5000-byte frame, over max_frame 1000" in msg
    assert info.value.size == 5000


def test_twenty_digit_lengths_are_whole() -> None:
    dec = sk.Decoder(header_size=8, max_frame=2**62)
    with pytest.raises(sk.FrameTooLarge) as info:
        dec.feed(encode_header(2**64 - 1, 8))
    msg = str(info.value)
    assert "18446744073709551615-byte frame" in msg and msg.endswith("peer is right)"), msg


def test_truncated_frame_message_is_whole(raw_to_conn) -> None:
    """A real peer dies inside a frame: the receive-side message, with its
    three numbers, reaches Python whole (20-digit numbers: tests/c)."""
    raw, conn = raw_to_conn(sk.Framing(header_size=8))
    raw.sendall(encode_header(1_000_000, 8) + b"abc")
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(sk.IncompleteFrame) as info:
        conn.recv(timeout=STEP_TIMEOUT)
    msg = str(info.value)
    assert msg.endswith("the peer sent a truncated frame"), msg
    assert "3 of 1000000 payload bytes received, 999997 missing" in msg


def test_a_frame_too_big_to_buffer_says_so(raw_to_conn) -> None:
    """A declared length under max_frame that cannot be buffered is a
    MemoryError that says what to do, not a bare one."""
    raw, conn = raw_to_conn(sk.Framing(header_size=8, max_frame=2**62))
    raw.sendall(encode_header(2**62, 8) + b"abc")
    with pytest.raises(MemoryError, match="lower Framing.max_frame"):
        conn.recv(timeout=STEP_TIMEOUT)


def _c_strings(path: Path) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', path.read_text())


def test_messages_and_stubs_name_the_public_class(conn_pair) -> None:
    for path in sorted((CSRC / "binding").glob("*.c")):
        bad = [s for s in _c_strings(path) if re.search(r"\bConn\b", s)]
        assert not bad, f"{path.name} names the private base Conn: {bad}"
    stub = (REPO_ROOT / "pysockkit" / "_core.pyi").read_text()
    assert not re.search(r"\bConn\b", stub)
    cli, _ = conn_pair()
    base = type(cli).__mro__[1]
    assert base.__name__ == "Connection" and base.__module__ == "pysockkit._core"
    with pytest.raises(TypeError, match=r"'pysockkit\._core\.Connection' objects"):
        sk.Connection.send(5, b"x")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="this Connection is already initialised"):
        cli.__init__(cli.fileno())  # type: ignore[misc]


def test_tcp_state_prints_its_name(conn_pair) -> None:
    """print(conn.state) shows ESTABLISHED, not 1 (issue 11, item 6)."""
    cli, peer = conn_pair()
    st = cli.state
    assert str(st) == f"{st}" == "%s" % st == "ESTABLISHED"
    assert repr(st) == "<TcpState.ESTABLISHED: 1>"
    assert f"[{st:>12}]" == "[ ESTABLISHED]" and f"{st:d}" == "1" and f"{st:02x}" == "01"
    assert st == 1 and int(st) == 1
    cli.close()
    assert str(peer.state) in ("CLOSE_WAIT", "ESTABLISHED")  # the FIN may still be on its way
    assert str(sk.TcpState.from_name("time-wait")) == "TIME_WAIT"
