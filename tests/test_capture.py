"""The segment capture: sk.Segment, sk.TcpFlags, the C parser, sk.record.

sk.record needs CAP_NET_RAW.  The recording tests run on the host's
loopback when this process is root (CI), and otherwise in a child process
in a private user and network namespace (``unshare -Urn``), where the child
has the capability over its own loopback; either way the same checks run.
Without the capability (``nobody``, outside a namespace) sk.record must
raise sk.CaptureNotPermitted, which says why and points to
sk.lab.conversation.

Every packet here is real loopback traffic, or built byte by byte with
struct for the parser.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pysockkit as sk
from pysockkit._capture import parse_packet
from helpers import child_env, scaled
from test_lab import _drop_privileges_prefix, _find_python

F = sk.TcpFlags
TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------- the values


def test_flags_print_like_the_textbook() -> None:
    assert str(F.SYN | F.ACK) == "SYN|ACK"
    assert str(F.ACK | F.FIN) == "FIN|ACK"          # SYN and FIN first
    assert str(F.PSH | F.ACK) == "PSH|ACK"
    assert str(F.RST | F.ACK) == "RST|ACK"
    assert str(F(0)) == "none"
    assert f"{F.SYN | F.ACK:>9}" == "  SYN|ACK"
    assert (F.SYN | F.ACK).text("+") == "SYN+ACK"
    assert [int(f) for f in (F.FIN, F.SYN, F.RST, F.PSH, F.ACK, F.URG, F.ECE, F.CWR)] == \
        [1, 2, 4, 8, 16, 32, 64, 128]


def test_segment_is_frozen_and_labels_itself() -> None:
    a, b = ("127.0.0.1", 40000), ("127.0.0.1", 5000)
    syn = sk.Segment(0.0, a, b, F.SYN, 1000, 0, 0, 0, 65495, 0,
                     sk.TcpOptions(mss=65495, wscale=7, sack_permitted=True,
                                   timestamps=(1, 0)))
    with pytest.raises(AttributeError):
        syn.seq = 1  # type: ignore[misc]
    assert syn.seg_len == 1 and syn.end_rseq == 1
    assert syn.label() == "SYN seq=0 mss=65495 wscale=7 sackOK TS"
    assert syn.label("absolute").startswith("SYN seq=1000 ")
    assert syn.label("symbolic", ("x", "y")) == "SYN seq=x"
    synack = sk.Segment(0.1, b, a, F.SYN | F.ACK, 7, 1001, 0, 1, 65483, 0)
    assert synack.label("symbolic", ("y", "x")) == "SYN+ACK seq=y ack=x+1"
    ack = sk.Segment(0.2, a, b, F.ACK, 1001, 8, 1, 1, 512, 0)
    assert ack.label("symbolic", ("x", "y")) == "ACK seq=x+1 ack=y+1"
    data = sk.Segment(0.3, a, b, F.PSH | F.ACK, 1001, 8, 1, 1, 512, 9, payload=b"x" * 9)
    assert data.label() == "PSH|ACK seq=1 ack=1 len=9" and data.end_rseq == 10
    assert "payload" not in repr(data)
    assert str(sk.TcpOptions(mss=1460, sack_permitted=True, timestamps=(5, 6), wscale=2)) \
        == "mss 1460,sackOK,TS val 5 ecr 6,wscale 2"
    with pytest.raises(ValueError, match="numbers must be"):
        syn.label("hex")


def _ipv4(tcp: bytes) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                       bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2])) + tcp


def _tcp(flags: int, seq: int, ack: int, opts: bytes = b"", payload: bytes = b"") -> bytes:
    return struct.pack(">HHIIBBHHH", 40000, 5000, seq, ack, (5 + len(opts) // 4) << 4,
                       flags, 1024, 0, 0) + opts + payload


def test_parser_against_struct_built_packets() -> None:
    opts = (struct.pack(">BBH", 2, 4, 1460) + b"\x04\x02" + struct.pack(">BBII", 8, 10, 7, 0)
            + b"\x01" + b"\x03\x03\x07")
    s = parse_packet(_ipv4(_tcp(0x02, 0xFFFFFFFF, 0, opts)))
    assert (s.src, s.dst, s.flags, s.seq, s.window, s.length) == \
        (("127.0.0.1", 40000), ("127.0.0.2", 5000), F.SYN, 0xFFFFFFFF, 1024, 0)
    assert s.options == sk.TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(7, 0))
    s = parse_packet(_ipv4(_tcp(0x18, 5, 9, payload=b"\0\0\0\x05hello")))
    assert s.flags == F.PSH | F.ACK and s.length == 9 and s.payload == b"\0\0\0\x05hello"
    assert (s.seq, s.ack, s.rseq, s.rack) == (5, 9, 0, 0)
    tcp = _tcp(0x11, 1, 2)
    ip6 = struct.pack(">IHBB", 6 << 28, len(tcp), 6, 64) + socket.inet_pton(
        socket.AF_INET6, "::1") + socket.inet_pton(socket.AF_INET6, "::2")
    s = parse_packet(ip6 + tcp, 0x86DD)
    assert s.src == ("::1", 40000) and s.flags == F.FIN | F.ACK
    # cut by a snap length: the wire length says how long the datagram was
    full = _ipv4(_tcp(0x18, 5, 9, payload=b"0123456789"))
    raw = sk._core.capture_parse(full[:42], 0, len(full))  # type: ignore[attr-defined]
    assert raw[10] == 10 and raw[11] == b"01"             # length, captured payload
    for bad, why in ((_ipv4(_tcp(2, 1, 0))[:30], "does not fit"),
                     (_ipv4(_tcp(2, 1, 0))[:10], "truncated"),
                     (b"\x45" + _ipv4(_tcp(2, 1, 0))[1:9] + b"\x11" + _ipv4(_tcp(2, 1, 0))[10:],
                      "not TCP"),
                     (b"", "empty")):
        with pytest.raises(ValueError, match=why):
            parse_packet(bad)


# ------------------------------------------------------------- sk.record

RECORD_CHECKS = r"""
import json, socket, sys, time
import pysockkit as sk

def lo_up():
    from pysockkit.lab import _lo_up
    try:
        _lo_up()
    except OSError:
        pass
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        try:
            socket.socket(socket.AF_INET6).bind(("::1", 0))
            return
        except OSError:
            time.sleep(0.01)

def seg(s):
    return {"src": list(s.src), "dst": list(s.dst), "flags": str(s.flags), "seq": s.seq,
            "ack": s.ack, "rseq": s.rseq, "rack": s.rack, "len": s.length, "t": s.time,
            "payload": s.payload.hex(), "mss": s.options.mss}

def main(in_netns):
    if in_netns:
        lo_up()
    out = {}
    for fam, host in (("ipv4", "127.0.0.1"), ("ipv6", "::1")):
        with sk.serve((host, 0), lambda m: m.upper()) as srv:
            other = sk.serve((host, 0), lambda m: m)
            try:
                with sk.record(port=srv.address[1]) as rec:
                    assert rec.running
                    assert sk.call(srv.address, b"hello", timeout=5.0) == b"HELLO"
                    sk.call(other.address, b"not ours", timeout=5.0)
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < 5 and (
                            len(rec.segments) < 10 or "TIME_WAIT" not in
                            [s.state.name for s in rec.states.get(
                                "%s:%d" % (host if fam == "ipv4" else "[%s]" % host,
                                           rec.segments[0].src[1]), [])]):
                        time.sleep(0.01)
            finally:
                other.close()
        assert not rec.running
        out[fam] = {
            "port": srv.address[1],
            "segments": [seg(s) for s in rec.segments],
            "states": {k: [[c.state.name, c.observed, c.by, c.segment] for c in v]
                       for k, v in rec.states.items()},
            "text": str(rec), "svg": rec.svg(), "table": str(rec.table()),
            "dropped": rec.dropped, "counts": rec.counts(), "notes": rec.notes,
        }
    # bounded memory: the ring keeps the first max_segments, counts the rest
    with sk.serve(("127.0.0.1", 0), lambda m: m) as srv:
        with sk.record(port=srv.address[1], max_segments=5, watch_states=False) as rec:
            for _ in range(3):
                sk.call(srv.address, b"x", timeout=5.0)
            time.sleep(0.05)
        out["ring"] = {"kept": len(rec.segments), "dropped": rec.dropped,
                       "first": str(rec.segments[0].flags), "text": str(rec)}
    # bounded in time: a recording left open stops by itself
    with sk.serve(("127.0.0.1", 0), lambda m: m) as srv:
        rec = sk.record(port=srv.address[1], max_seconds=0.3, watch_states=False)
        t0 = time.monotonic()
        while rec.running and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        stopped_by_itself = not rec.running
        sk.call(srv.address, b"late", timeout=5.0)   # after the end: not recorded
        time.sleep(0.05)
        n = len(rec.segments)
        rec.stop()
        out["timed"] = {"stopped": stopped_by_itself, "kept": n, "text": str(rec)}
    print(json.dumps(out))

main(len(sys.argv) > 1)
"""


def _run_record_checks() -> dict[str, Any]:
    """RECORD_CHECKS as root on the host, or in a private namespace."""
    env = child_env()
    if os.geteuid() == 0:
        cmd = [sys.executable, "-W", "error", "-c", RECORD_CHECKS]
    else:
        unshare = shutil.which("unshare")
        assert unshare is not None, "util-linux unshare is needed to capture without root"
        cmd = [unshare, "-Urn", sys.executable, "-W", "error", "-c", RECORD_CHECKS, "netns"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=scaled(120))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return _run_record_checks()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_record_captures_each_segment_once(recorded: dict[str, Any], family: str) -> None:
    rec = recorded[family]
    segs = rec["segments"]
    port = rec["port"]
    # only the port asked for: sk.call to the other server is not there
    assert all(port in (s["src"][1], s["dst"][1]) for s in segs), segs
    flags = [s["flags"] for s in segs]
    # a short connection: handshake, request, reply, close (ACKs may merge)
    assert flags[:3] == ["SYN", "SYN|ACK", "ACK"], flags
    assert flags.count("SYN") == 1 and flags.count("FIN|ACK") == 2, flags
    assert flags[-1] == "ACK"
    # each segment once: loopback taps every packet twice, one is kept
    keys = [(tuple(s["src"]), s["seq"], s["ack"], s["flags"], s["len"]) for s in segs]
    assert len(keys) == len(set(keys)), keys
    times = [s["t"] for s in segs]
    assert times == sorted(times) and times[0] >= 0
    syn, synack, ack = segs[:3]
    assert synack["ack"] == (syn["seq"] + 1) % 2**32          # SYN takes one number
    assert ack["ack"] == (synack["seq"] + 1) % 2**32
    assert (syn["rseq"], synack["rseq"], synack["rack"], ack["rseq"], ack["rack"]) == \
        (0, 0, 1, 1, 1)
    assert syn["mss"] is not None and syn["dst"][1] == port
    data = [s for s in segs if s["len"]]
    assert [s["len"] for s in data] == [9, 9]                 # 4-byte header + b"hello"
    assert bytes.fromhex(data[0]["payload"]) == b"\0\0\0\x05hello"
    assert bytes.fromhex(data[1]["payload"]) == b"\0\0\0\x05HELLO"
    for fin in (s for s in segs if "FIN" in s["flags"]):      # FIN takes one number too
        peer = [s for s in segs if s["src"] == fin["dst"] and "ACK" in s["flags"]
                and s["ack"] == (fin["seq"] + fin["len"] + 1) % 2**32]
        assert peer, fin
    assert rec["dropped"] == 0
    assert rec["counts"]["frames"] == 2 and rec["counts"]["payload_bytes"] == 18
    assert "frame 5 B" in rec["notes"].values()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_record_states_and_display(recorded: dict[str, Any], family: str) -> None:
    rec = recorded[family]
    states = rec["states"]
    assert len(states) == 2                    # the two ends, named by address
    client = [k for k in states if not k.endswith(f":{rec['port']}")][0]
    server = [k for k in states if k != client][0]
    assert [s[0] for s in states[client]][0] == "CLOSED"
    assert "TIME_WAIT" in [s[0] for s in states[client]]      # the client closed first
    assert [s[0] for s in states[server]][:1] == ["LISTEN"]
    assert [s[0] for s in states[server]][-1] == "CLOSED"
    for name, path in states.items():
        for state, observed, by, segment in path:
            if observed:
                assert by in ("TCP_INFO", "sock_diag"), (name, state, by)
            else:
                assert by == "initial" or segment is not None, (name, state, by)
    text = rec["text"]
    assert all(len(line) <= 100 for line in text.splitlines()), text
    assert "SYN|ACK seq=0 ack=1" in text and "frame 5 B" in text
    assert "(STATE): inferred" in text
    import xml.etree.ElementTree as ET

    root = ET.fromstring(rec["svg"])
    assert root.tag.endswith("svg")
    assert "SYN|ACK" in rec["table"] and "mss 654" in rec["table"]


def test_record_is_bounded_in_memory_and_time(recorded: dict[str, Any]) -> None:
    ring = recorded["ring"]
    assert ring["kept"] == 5 and ring["first"] == "SYN"
    assert ring["dropped"] >= 3 * 7 - 5                    # never silent:
    assert f"{ring['dropped']} segments were seen but not kept" in ring["text"]
    timed = recorded["timed"]
    assert timed["stopped"] and timed["kept"] == 0
    assert "max_seconds" in timed["text"]


def test_record_bad_arguments() -> None:
    for kw, exc in (({"port": 0}, ValueError), ({"port": 70000}, ValueError),
                    ({"port": "80"}, TypeError), ({"ports": range(1, 20)}, ValueError),
                    ({"port": 1, "max_segments": 0}, ValueError),
                    ({"port": 1, "payload_bytes": -1}, ValueError),
                    ({"port": 1, "max_seconds": 0}, ValueError)):
        with pytest.raises(exc):
            sk.record(**kw)


NOT_PERMITTED = r"""
import errno, json
import pysockkit as sk
try:
    sk.record(port=9)
    print(json.dumps({"raised": None}))
except sk.Error as exc:
    print(json.dumps({"raised": type(exc).__name__, "errno": exc.errno, "msg": str(exc),
                      "permission": isinstance(exc, PermissionError),
                      "typed": isinstance(exc, sk.CaptureNotPermitted)}))
"""


def as_nobody() -> tuple[list[str], str, dict[str, str]]:
    """How to run this pysockkit as ``nobody`` (as we are, if not root):
    the command prefix that drops privileges, an interpreter that user
    can run, and its environment."""
    if os.geteuid() == 0:
        prefix = _drop_privileges_prefix(pwd.getpwnam("nobody"))
        assert prefix is not None, "setpriv or runuser (util-linux) is needed"
    else:
        prefix = []
    tried: list[str] = []
    python, env = _find_python(prefix, str(Path(sk.__file__).resolve().parent.parent), tried)
    assert python is not None, tried
    return prefix, python, env


def test_record_without_cap_net_raw_is_a_typed_error() -> None:
    prefix, python, env = as_nobody()
    r = subprocess.run([*prefix, python, "-c", NOT_PERMITTED], capture_output=True, text=True,
                       env=env, cwd="/", timeout=scaled(30))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["typed"] and res["permission"] and res["errno"] == errno.EPERM, res
    assert "CAP_NET_RAW" in res["msg"] and "sk.lab.conversation" in res["msg"], res
