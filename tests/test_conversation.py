"""sk.lab.conversation: every scenario, segment by segment, beside both
ends' states; as this user (root in CI) and as ``nobody``; checked against
tcpdump run in the same network namespace.

Each scenario runs in a private user and network namespace (``unshare
-Urn``), so the loopback carries nothing else and the assertions can be
exact: the flags of every segment in order, who sent it, ``ack = seq + 1``
for SYN and FIN, the payload lengths, the frames named, the states each
end went through and how each was known (seen by the state sampler, or
inferred from a segment).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

import pysockkit as sk
from pysockkit import lab
from helpers import child_env, scaled
from test_capture import as_nobody

NAMES = ["handshake", "close", "close-combined", "simultaneous-close", "half-close", "abort",
         "lost-last-ack", "short", "long", "syn-to-closed-port", "keepalive"]
H = ["SYN", "SYN|ACK", "ACK"]

# What a test keeps of a recording (also computed by the child processes,
# which import nothing from the tests: this text is exec'ed on both sides).
SUMMARY = r'''
def summary(rec):
    conn = rec.connections[0]
    client = conn.addresses[0]
    return {
        "name": rec.name, "description": rec.description,
        "port": conn.addresses[1][1], "client_port": client[1],
        "flags": [str(s.flags) for s in rec.segments],
        "dirs": "".join(">" if s.src == client else "<" for s in rec.segments),
        "seq": [s.seq for s in rec.segments], "ack": [s.ack for s in rec.segments],
        "rseq": [s.rseq for s in rec.segments], "rack": [s.rack for s in rec.segments],
        "len": [s.length for s in rec.segments],
        "lost": list(rec.lost), "notes": {str(k): v for k, v in rec.notes.items()},
        "states": {k: [[c.state.name, c.observed, c.by, c.segment] for c in v]
                   for k, v in rec.states.items()},
        "counts": rec.counts(), "text": str(rec), "svg": rec.svg(),
        "symbolic": rec.ladder("symbolic"),
    }
'''
_ns: dict[str, Any] = {}
exec(SUMMARY, _ns)
summary = _ns["summary"]


def _path(s: dict[str, Any], end: str) -> list[str]:
    return [x[0] for x in s["states"][end]]


def check_common(s: dict[str, Any]) -> None:
    """What every conversation must show."""
    n = len(s["flags"])
    assert n == len(s["dirs"]) == len(s["len"]) and n >= 2, s["flags"]
    assert s["flags"][0] == "SYN" and s["dirs"][0] == ">"
    assert s["rseq"][0] == 0
    # SYN and FIN each take one sequence number: the peer acks seq + len + 1
    for i, f in enumerate(s["flags"]):
        if "SYN" in f or "FIN" in f:
            want = (s["seq"][i] + s["len"][i] + 1) % 2**32
            later = [j for j in range(i + 1, n) if s["dirs"][j] != s["dirs"][i]
                     and "ACK" in s["flags"][j] and s["ack"][j] == want]
            assert later, (s["name"], i, f, s["flags"])
    # relative numbers: from each side's ISN
    for i in range(n):
        if s["dirs"][i] == "<" and "ACK" in s["flags"][i] and s["flags"][0] == "SYN":
            assert s["ack"][i] == (s["seq"][0] + s["rack"][i]) % 2**32
    # states: the initial ones were read with TCP_INFO; an observed state
    # names its witness, an inferred one the segment and event behind it
    assert set(s["states"]) == {"client", "server"}
    first = s["states"]["client"][0]
    assert first[:3] == ["CLOSED", True, "TCP_INFO"], first
    for end, path in s["states"].items():
        for state, observed, by, segment in path:
            if observed:
                assert by in ("TCP_INFO", "sock_diag"), (end, state, by)
            else:
                assert by != "initial" and segment is not None and 0 <= segment < n, \
                    (end, state, by, segment)
    # display: 100 columns, parseable SVG with both lifelines
    lines = s["text"].splitlines()
    assert all(len(line) <= 100 for line in lines), [x for x in lines if len(x) > 100]
    assert s["text"].startswith(s["name"] + ": ")
    assert "SYN seq=0" in s["text"] and "(STATE): inferred" in s["text"]
    assert "SYN seq=x" in s["symbolic"]
    root = ET.fromstring(s["svg"])
    assert root.tag.endswith("svg") and "client" in s["svg"] and "server" in s["svg"]
    assert "[this time" not in s["description"], s["description"]


def check_scenario(s: dict[str, Any]) -> None:
    check_common(s)
    name = s["name"]
    flags, dirs, lens, notes = s["flags"], s["dirs"], s["len"], s["notes"]
    client, server = _path(s, "client"), _path(s, "server")
    closed_first = ["CLOSED", "SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
                    "TIME_WAIT"]
    passive = ["LISTEN", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    assert s["states"]["server"][0][:3] == (
        ["CLOSED", True, "TCP_INFO"] if name == "syn-to-closed-port"
        else ["LISTEN", True, "TCP_INFO"])
    if name == "handshake":
        assert flags == H and dirs == "><>"
        assert s["rack"][1] == 1 and s["rseq"][2] == 1 and s["rack"][2] == 1
        assert client == ["CLOSED", "SYN_SENT", "ESTABLISHED"]
        assert server == ["LISTEN", "SYN_RCVD", "ESTABLISHED"]
        assert "SYN+ACK seq=y ack=x+1" in s["symbolic"]
        assert "ACK seq=x+1 ack=y+1" in s["symbolic"]
    elif name == "close":
        assert flags == H + ["FIN|ACK", "ACK", "FIN|ACK", "ACK"] and dirs == "><>><<>"
        assert client == closed_first and server == passive
    elif name == "close-combined":
        assert flags == H + ["FIN|ACK", "FIN|ACK", "ACK"] and dirs == "><>><>"
        assert client == closed_first and server == passive
        assert s["ack"][4] == (s["seq"][3] + 1) % 2**32   # the ACK rides on the FIN
    elif name == "simultaneous-close":
        assert flags == H + ["FIN|ACK"] * 4 + ["ACK", "ACK"], flags
        assert sorted(dirs[3:5]) == sorted(dirs[5:7]) == ["<", ">"]
        assert s["lost"] == [3, 4]
        assert "retransmission" in notes["5"] and "retransmission" in notes["6"]
        both = ["ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT"]
        assert client[-4:] == both and server[-4:] == both, (client, server)
    elif name == "half-close":
        fin_c = flags.index("FIN|ACK")
        assert dirs[fin_c] == ">"
        assert [n for n, d in zip(lens, dirs) if n and d == ">"] == [11]
        assert [n for n, d in zip(lens, dirs) if n and d == "<"] == [9, 24]
        first_reply = next(i for i, (n, d) in enumerate(zip(lens, dirs)) if n and d == "<")
        assert first_reply > fin_c                  # data flows after the client's FIN
        assert flags[-2:] == ["FIN|ACK", "ACK"] and dirs[-2:] == "<>"
        assert sorted(v for v in notes.values() if v.startswith("frame")) == \
            ["frame 20 B", "frame 5 B", "frame 7 B"]
        assert client == closed_first and server == passive
    elif name == "abort":
        assert flags[-1] == "RST|ACK" and dirs[-1] == ">"
        assert not any("FIN" in f for f in flags)
        assert [n for n in lens if n] == [9]
        assert client[-2:] == ["ESTABLISHED", "CLOSED"] and server[-2:] == ["ESTABLISHED",
                                                                          "CLOSED"]
        assert "TIME_WAIT" not in client + server
    elif name == "lost-last-ack":
        assert flags == H + ["FIN|ACK", "ACK", "FIN|ACK", "ACK", "FIN|ACK", "ACK"], flags
        assert dirs == "><>><<><>"
        assert s["lost"] == [6]
        assert (s["seq"][7], s["ack"][7]) == (s["seq"][5], s["ack"][5])   # the same FIN
        assert notes["7"].startswith("retransmission") and "ACKs it again" in notes["7"]
        assert "dropped on arrival" in notes["6"]
        assert client == closed_first and server == passive
        # the server stayed in LAST_ACK until the second ACK
        closed = [x for x in s["states"]["server"] if x[0] == "CLOSED"][0]
        assert closed[3] == 8
    elif name in ("short", "long", "keepalive"):
        assert flags[:3] == H and flags.count("FIN|ACK") == 2 and flags[-1] == "ACK"
        assert client == closed_first and server == passive
        if name == "short":
            assert [n for n in lens if n] == [9, 9]
            assert s["counts"]["frames"] == 2 and s["counts"]["payload_bytes"] == 18
        elif name == "long":
            assert flags.count("SYN") == 1                     # one handshake, one close
            assert s["counts"]["frames"] == 6
            assert s["counts"]["heartbeats"] >= 2
            data = [notes[str(i)] for i, n in enumerate(lens) if n]
            assert all(v.startswith(("frame", "heartbeat", "2 frames")) for v in data), data
        else:
            probes = [i for i, v in notes.items() if v.startswith("keepalive probe")]
            assert len(probes) >= 2, notes
            for i in map(int, probes):
                assert (flags[i], dirs[i], lens[i], s["rseq"][i]) == ("ACK", ">", 0, 0)
                assert flags[i + 1] == "ACK" and dirs[i + 1] == "<" and s["rack"][i + 1] == 1
    elif name == "syn-to-closed-port":
        assert flags == ["SYN", "RST|ACK"] and dirs == "><"
        assert s["rack"][1] == 1
        assert client == ["CLOSED", "SYN_SENT", "CLOSED"] and server == ["CLOSED"]
    else:
        raise AssertionError(f"no checks for {name}")


# ---------------------------------------------------------------- listing


def test_conversations_are_listed_with_one_line_each() -> None:
    table = lab.conversations()
    assert [n for n, _ in table] == NAMES
    for name, what in table:
        assert what and "\n" not in what, name
    text = str(table)
    assert text.splitlines()[0].split() == ["name", "shows"]
    assert all(name in text for name in NAMES)
    assert "<table>" in table._repr_html_()


def test_bad_input() -> None:
    with pytest.raises(ValueError) as info:
        lab.conversation("no-such-thing")
    assert all(name in str(info.value) for name in NAMES)
    with pytest.raises(TypeError):
        lab.conversation(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lab.conversation("close", family="ipx")
    with pytest.raises(ValueError):
        lab.conversation("close", timeout=0)


def test_no_user_namespaces_is_a_typed_error() -> None:
    with pytest.raises(lab.LabUnavailable) as info:
        lab.conversation("handshake", unshare="/nonexistent/unshare")
    assert isinstance(info.value, sk.Error)
    assert "unshare -Urn" in str(info.value) and "not found" in str(info.value)
    # an unshare that fails, as where unprivileged user namespaces are off
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(lab.LabUnavailable) as info:
        lab.conversation("handshake", unshare=false)
    assert "user namespaces" in str(info.value) and "exited with status 1" in str(info.value)
    # the rest of pysockkit keeps working
    with lab.reproduce(sk.TcpState.ESTABLISHED) as scene:
        assert scene.reached


def test_a_conversation_is_bounded_in_time() -> None:
    with pytest.raises(sk.Timeout, match="keepalive probe"):
        lab.conversation("keepalive", timeout=0.3)


# -------------------------------------------------------------- scenarios


@pytest.fixture(scope="module")
def played() -> dict[str, dict[str, Any]]:
    return {name: summary(lab.conversation(name, timeout=scaled(30))) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_scenario(played: dict[str, dict[str, Any]], name: str) -> None:
    check_scenario(played[name])


@pytest.mark.parametrize("name", ["handshake", "close", "lost-last-ack"])
def test_scenario_over_ipv6(name: str) -> None:
    s = summary(lab.conversation(name, family="ipv6", timeout=scaled(30)))
    assert "[::1]:" in s["text"]
    check_scenario(s)


def test_short_and_long_side_by_side(played: dict[str, dict[str, Any]]) -> None:
    short, long_ = played["short"]["counts"], played["long"]["counts"]
    # one handshake and one close each: the short one pays them per message
    assert short["syn"] == long_["syn"] == 2 and short["fin"] == long_["fin"] == 2
    assert long_["frames"] == 3 * short["frames"]
    assert long_["segments"] > short["segments"]


# ------------------------------------------------------------ as nobody

NOBODY = SUMMARY + r'''
import json, os, sys
import pysockkit as sk
out = {"euid": os.geteuid(), "runs": {}}
for name in sys.argv[1:]:
    out["runs"][name] = summary(sk.lab.conversation(name, timeout=float(os.environ["T"])))
print(json.dumps(out))
'''


def test_every_scenario_as_nobody() -> None:
    prefix, python, env = as_nobody()
    env["T"] = str(scaled(30))
    r = subprocess.run([*prefix, python, "-W", "error", "-c", NOBODY, *NAMES],
                       capture_output=True, text=True, env=env, cwd="/",
                       timeout=scaled(240))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["euid"] != 0
    assert list(report["runs"]) == NAMES
    for name in NAMES:
        check_scenario(report["runs"][name])


# ------------------------------------------------------------ tcpdump

TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"

# Runs in its own user + network namespace as uid 1 with every capability
# kept (so tcpdump does not try to drop root, which a user namespace
# forbids): lo up, then for each scenario tcpdump -w in the background,
# the scenario played right here (run_scenario), tcpdump stopped and its
# capture printed.
CROSS = SUMMARY + r'''
import json, os, signal, socket, subprocess, sys, tempfile, time
from pysockkit.lab import _lo_up
from pysockkit._conversation import run_scenario
_lo_up()
t0 = time.monotonic()
while True:
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
        break
    except OSError:
        if time.monotonic() - t0 > 5:
            raise
        time.sleep(0.01)
tcpdump = os.environ["TCPDUMP"]
out = {}
work = tempfile.mkdtemp()
for arg in sys.argv[1:]:
    name, fam = arg.split("/")
    pcap = os.path.join(work, name + fam + ".pcap")
    td = subprocess.Popen([tcpdump, "-i", "lo", "--immediate-mode", "-U", "-n", "-s", "256",
                           "-w", pcap, "tcp"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = td.stderr.readline()               # "listening on lo, ..."
    assert "listening" in line, line
    rec = run_scenario(name, fam, 30.0)
    time.sleep(0.2)
    td.send_signal(signal.SIGINT)
    td.communicate(timeout=10)
    text = subprocess.run([tcpdump, "-r", pcap, "-nn", "-S", "-tt"], capture_output=True,
                          text=True, timeout=30).stdout
    out[arg] = {"ours": summary(rec), "tcpdump": text}
print(json.dumps(out))
'''

_TD_LINE = re.compile(
    r"^\S+ IP6? (?P<src>\S+)\.(?P<sport>\d+) > (?P<dst>\S+)\.(?P<dport>\d+): "
    r"Flags \[(?P<flags>[^\]]*)\](?:, seq (?P<seq>\d+)(?::\d+)?)?(?:, ack (?P<ack>\d+))?"
    r".*, length (?P<len>\d+)")
_TD_FLAGS = {"S": "SYN", "F": "FIN", "R": "RST", "P": "PSH", ".": "ACK", "U": "URG",
             "E": "ECE", "W": "CWR"}


def _tcpdump_segments(text: str, port: int) -> list[dict[str, Any]]:
    segs = []
    for line in text.splitlines():
        m = _TD_LINE.match(line)
        assert m, line
        if port not in (int(m["sport"]), int(m["dport"])):
            continue
        f = sk.TcpFlags(0)
        for ch in m["flags"]:
            f |= sk.TcpFlags[_TD_FLAGS[ch]]
        segs.append({"sport": int(m["sport"]), "flags": str(f),
                     "seq": None if m["seq"] is None else int(m["seq"]),
                     "ack": None if m["ack"] is None else int(m["ack"]),
                     "len": int(m["len"])})
    return segs


def test_segments_match_tcpdump_in_the_same_namespace() -> None:
    assert shutil.which(TCPDUMP), "tcpdump is needed (apt-get install tcpdump; tests/run_all.sh does)"
    unshare = shutil.which("unshare")
    assert unshare is not None
    runs = ["handshake/ipv4", "close/ipv4", "lost-last-ack/ipv4", "half-close/ipv4",
            "simultaneous-close/ipv4", "close/ipv6", "syn-to-closed-port/ipv6"]
    env = child_env()
    env["TCPDUMP"] = TCPDUMP
    r = subprocess.run([unshare, "--user", "--net", "--map-user=1", "--map-group=1",
                        "--keep-caps", sys.executable, "-W", "error", "-c", CROSS, *runs],
                       capture_output=True, text=True, env=env, timeout=scaled(180))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for run in runs:
        ours, text = report[run]["ours"], report[run]["tcpdump"]
        check_scenario(ours)
        theirs = _tcpdump_segments(text, ours["port"])
        # after the recording, the scenario aborts what is still open: RSTs
        n = len(ours["flags"])
        assert len(theirs) >= n, (run, text)
        assert all("RST" in t["flags"] for t in theirs[n:]), (run, text)
        for i, t in enumerate(theirs[:n]):
            want_dir = ">" if t["sport"] == ours["client_port"] else "<"
            assert (t["flags"], want_dir, t["len"]) == \
                (ours["flags"][i], ours["dirs"][i], ours["len"][i]), (run, i, text)
            # tcpdump prints seq unless the segment is a bare ACK
            if t["seq"] is not None:
                assert t["seq"] == ours["seq"][i], (run, i)
            if t["ack"] is not None:
                assert t["ack"] == ours["ack"][i], (run, i)
            else:
                assert "ACK" not in ours["flags"][i]
        assert sum(t["seq"] is not None for t in theirs[:n]) >= 2


# ------------------------------------------------------------ command line


def test_cli_lab() -> None:
    env = child_env()
    r = subprocess.run([sys.executable, "-m", "pysockkit", "lab", "handshake", "--numbers",
                        "symbolic"], capture_output=True, text=True, env=env,
                       timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    assert "SYN+ACK seq=y ack=x+1" in r.stdout and "ESTABLISHED" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pysockkit", "lab"], capture_output=True,
                       text=True, env=env, timeout=scaled(60))
    assert r.returncode == 0 and all(n in r.stdout for n in NAMES)
    r = subprocess.run([sys.executable, "-m", "pysockkit", "lab", "nope"], capture_output=True,
                       text=True, env=env, timeout=scaled(60))
    assert r.returncode == 2 and "handshake" in r.stderr


def test_tour_step_shows_handshake_and_close(capsys: pytest.CaptureFixture[str]) -> None:
    from pysockkit import _tour

    step = [f for f in _tour.STEPS if f.__name__ == "step_packets"]
    assert len(step) == 1
    step[0]()
    out = capsys.readouterr().out
    assert "SYN seq=x" in out and "SYN+ACK seq=y ack=x+1" in out and "ack=y+1" in out
    assert "FIN+ACK" in out and "TIME_WAIT" in out
    assert all(len(line) <= 100 for line in out.splitlines())

