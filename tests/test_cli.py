"""``python -m pysockkit ss`` and ``python -m pysockkit watch``, run as
subprocesses against real loopback sockets; every run is time-bounded."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from helpers import child_env

RUN_TIMEOUT = 30.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pysockkit", *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env=child_env(),
    )


@contextlib.contextmanager
def scene(family: int = socket.AF_INET) -> Iterator[tuple[int, socket.socket, socket.socket]]:
    """A listener, one ESTABLISHED pair on it, and one TIME_WAIT socket."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.create_server((host, 0), family=family) as srv:
        port = srv.getsockname()[1]
        old = socket.create_connection((host, port))
        peer, _ = srv.accept()
        old.close()
        peer.recv(1)
        peer.close()                   # old: FIN_WAIT_2 -> TIME_WAIT
        cli_sock = socket.create_connection((host, port))
        acc, _ = srv.accept()
        with cli_sock, acc:
            cli_sock.sendall(b"hello")
            acc.recv(5)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if "TIME-WAIT" in cli("ss", "-p", str(port)).stdout:
                    break
                time.sleep(0.01)
            yield port, cli_sock, acc


def rows(out: str) -> list[list[str]]:
    return [ln.split() for ln in out.splitlines()[1:] if ln and not ln.startswith("\t")]


def test_ss_lists_like_ss_tan() -> None:
    with scene() as (port, c, a):
        r = cli("ss", "-p", str(port))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split()[:3] == ["State", "Recv-Q", "Send-Q"]
        states = sorted(row[0] for row in rows(r.stdout))
        # an earlier test's connection to a reused port number may still sit
        # in TIME_WAIT too: ours is one of the TIME-WAIT rows
        live = [st for st in states if st != "TIME-WAIT"]
        assert live == ["ESTAB", "ESTAB", "LISTEN"] and "TIME-WAIT" in states, r.stdout
        here = f"127.0.0.1:{c.getsockname()[1]}"
        assert any(row[0] == "ESTAB" and row[3] == here for row in rows(r.stdout))
        # and it agrees with iproute2's ss where that is installed
        try:
            ref = subprocess.run(["ss", "-tanH", f"( sport = :{port} or dport = :{port} )"],
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT)
        except FileNotFoundError:
            return
        ref_states = sorted(ln.split()[0] for ln in ref.stdout.splitlines())
        assert [st for st in ref_states if st != "TIME-WAIT"] == live
        assert "TIME-WAIT" in ref_states


def test_ss_state_filter_and_info() -> None:
    with scene() as (port, _c, _a):
        r = cli("ss", "-s", "time-wait", "-p", str(port))
        tw = [row[0] for row in rows(r.stdout)]
        assert tw and set(tw) == {"TIME-WAIT"}, r.stdout  # ours (and maybe older ones)
        r = cli("ss", "-s", "ESTABLISHED", "-s", "LISTEN", "-p", str(port))
        assert sorted(row[0] for row in rows(r.stdout)) == ["ESTAB", "ESTAB", "LISTEN"]
        r = cli("ss", "-i", "-p", str(port))
        assert r.returncode == 0, r.stderr
        details = [ln for ln in r.stdout.splitlines() if ln.startswith("\t")]
        assert len([d for d in details if "rtt:" in d and "cwnd:" in d]) == 2, r.stdout
        assert any(re.search(r"timer:\(time_wait,\d+\.\d+s,0\)", d) for d in details), r.stdout
        assert any("bytes_received:5" in d for d in details), r.stdout


def test_ss_families_and_errors() -> None:
    with scene(socket.AF_INET6) as (port, _c, _a):
        # -4 lists none of our IPv6 sockets (an IPv4 socket of another test
        # may share the port number, e.g. a TIME_WAIT: those are IPv4)
        assert all("[" not in row[3] for row in rows(cli("ss", "-4", "-p", str(port)).stdout))
        six = rows(cli("ss", "-6", "-p", str(port)).stdout)
        assert all(row[3].startswith("[::1]") for row in six)
        assert len([row for row in six if row[0] != "TIME-WAIT"]) == 3 and len(six) >= 4
    r = cli("ss", "-s", "NOT_A_STATE")
    assert r.returncode == 2 and "unknown TCP state" in r.stderr
    assert cli("ss", "-4", "-6").returncode == 2


def test_watch_prints_transitions() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        p = subprocess.Popen(
            [sys.executable, "-m", "pysockkit", "watch", f"127.0.0.1:{port}",
             "--seconds", "3", "--interval", "0.001"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )
        try:
            assert p.stdout is not None
            header = p.stdout.readline()
            assert header.startswith(f"watching TCP sockets on 127.0.0.1:{port}"), header
            first = p.stdout.readline()       # the listener, present at start
            assert "LISTEN" in first and "new" not in first, first
            a = socket.create_connection(("127.0.0.1", port))
            b, _ = srv.accept()
            time.sleep(0.1)
            a.close()                         # a: FIN_WAIT_2, b: CLOSE_WAIT
            time.sleep(0.1)
            b.close()                         # a: TIME_WAIT, b: gone
            out, err = p.communicate(timeout=RUN_TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 0, err
        assert out.count("new: ESTABLISHED") == 2, out
        assert "-> FIN_WAIT_2" in out and "FIN_WAIT_2 -> TIME_WAIT" in out, out
        assert "ESTABLISHED -> CLOSE_WAIT" in out, out
        assert re.search(r"(CLOSE_WAIT|LAST_ACK) -> CLOSED \(gone\)", out), out
        for ln in out.splitlines()[1:-1]:
            assert re.match(r"\s*\d+\.\d{3} ms  ", ln), ln
        assert re.fullmatch(r"\d+ changes in \d+\.\d s", out.splitlines()[-1]), out


def test_watch_is_bounded_and_validates() -> None:
    t0 = time.monotonic()
    r = cli("watch", "*:1", "--seconds", "0.2")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10
    assert r.stdout.splitlines()[-1] == "0 changes in 0.2 s"
    for bad in ("nonsense", "127.0.0.1:99999", "127.0.0.1:"):
        r = cli("watch", bad, "--seconds", "0.1")
        assert r.returncode == 2 and "HOST:PORT" in r.stderr, (bad, r.stderr)


@pytest.mark.parametrize("args", [["ss", "--help"], ["watch", "--help"]])
def test_help(args: list[str]) -> None:
    r = cli(*args)
    assert r.returncode == 0 and "usage:" in r.stdout


# ----------------------------------------------- bad input: one line, no traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    """Check the run failed with `code` and one line on stderr; return it."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("python -m pysockkit"), lines[0]
    return lines[0]


USAGE_ERRORS = [
    (["ping", "127.0.0.1:70000"], "port 70000 is out of range"),
    (["ping", "127.0.0.1:9", "-n", "0"], "'0' is not a whole number >= 1"),
    (["ping", "127.0.0.1:9", "-n", "x"], "'x' is not a whole number >= 1"),
    (["ping", "localhost:abc"], "port 'abc' in 'localhost:abc' is not a number"),
    (["ping", "--timeout", "-1", "127.0.0.1:9"], "'-1' is not a number of seconds >= 0"),
    (["ping", "--timeout", "nan", "127.0.0.1:9"], "'nan' is not a number of seconds >= 0"),
    (["ping", "::1:9"], "ambiguous"),
    (["ping", "9000"], "only a port"),
    (["ping"], "required: HOST:PORT"),
    (["ss", "-p", "99999"], "'99999' is not a port number"),
    (["ss", "-p", "http"], "'http' is not a port number"),
    (["ss", "-s", "NOT_A_STATE"], "unknown TCP state"),
    (["ss", "-4", "-6"], "not allowed with"),
    (["serve", "--seconds", "-1"], "'-1' is not a number of seconds >= 0"),
    (["serve", "127.0.0.1"], "has no port"),
    (["serve", "127.0.0.1:1", "extra"], "unrecognized arguments: extra"),
    (["watch", "127.0.0.1:99999"], "out of range"),
    (["watch", "*:80", "--interval", "0"], "'0' is not a number of seconds in (0, 3600]"),
    (["watch", "*:80", "--interval", "inf"], "'inf' is not a number of seconds"),
    (["watch", "*:80", "--seconds", "-2"], "'-2' is not a number of seconds >= 0"),
    (["nosuch"], "invalid choice"),
    ([], "required: COMMAND"),
]


@pytest.mark.parametrize("args, words", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line(args: list[str], words: str) -> None:
    line = one_line_error(cli(*args), 2)
    assert words in line, line
    assert "--help" in line, line


def test_runtime_errors_are_one_line() -> None:
    port = _free_port()
    line = one_line_error(cli("ping", f"127.0.0.1:{port}", "--timeout", "5"), 1)
    assert f"nothing listens on 127.0.0.1:{port}" in line, line
    line = one_line_error(cli("serve", "nosuch.invalid:9001", "--seconds", "0.1"), 1)
    assert "nosuch.invalid" in line and "host name" in line, line
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as busy:
        port = busy.getsockname()[1]
        line = one_line_error(cli("serve", f"[::1]:{port}", "--seconds", "0.1"), 1)
        assert f"another socket holds [::1]:{port}" in line, line
        line = one_line_error(cli("watch", "nosuch.invalid:80", "--seconds", "0.1"), 2)
        assert "cannot resolve 'nosuch.invalid'" in line, line


def test_serve_and_ping_print_bracketed_ipv6() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "pysockkit", "serve", "[::1]:0", "--seconds", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        m = re.fullmatch(r"echo server on \[::1\]:(\d+); Ctrl-C stops it\n", first)
        assert m, first
        r = cli("ping", f"[::1]:{m.group(1)}", "-n", "3")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"3 requests to [::1]:{m.group(1)}: min "), r.stdout
    finally:
        p.terminate()
        p.communicate(timeout=RUN_TIMEOUT)


@pytest.mark.parametrize("cmd, shown", [
    ("serve", ["(default: 127.0.0.1:9000)", "(default: until Ctrl-C)"]),
    ("ping", ["(default: 10)", "(default: 2.0)"]),
    ("watch", ["(default: 0.002)", "(default: until Ctrl-C)"]),
    ("ss", ["(default: all)", "(default: any)"]),
])
def test_help_shows_defaults(cmd: str, shown: list[str]) -> None:
    r = cli(cmd, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    for s in shown:
        assert s in text, (s, r.stdout)
    assert "(default: None)" not in text and "(default: False)" not in text


def test_readme_names_every_command() -> None:
    """The README's command-line line lists each command that --help lists."""
    from pathlib import Path

    helptext = cli("--help").stdout
    commands = re.findall(r"^    (\w+)\s", helptext, re.M)
    assert {"tour", "serve", "ping", "ss", "watch", "lab"} <= set(commands), commands
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = readme[readme.index("Command line: `python -m pysockkit"):]
    line = line[:line.index("\n\n")]
    for name in commands:
        assert re.search(rf"(pysockkit |\|\s*|`){name}\b", line), (name, line)
