"""``python -m pysockkit serve`` and ``ping``, run as real subprocesses.

The server prints the address it bound (port 0 picks a free one), ``ping``
sends framed requests to it and prints a summary, Ctrl-C (SIGINT) or
``--seconds`` stops the server cleanly with a count of what it served.
Every run is bounded in time; every process is stopped by its pid.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

import pysockkit as sk
from helpers import STEP_TIMEOUT, Spawned, child_env, scaled

BANNER = re.compile(r"^echo server on (127\.0\.0\.1):(\d+); Ctrl-C stops it$")
SUMMARY = re.compile(
    r"^(\d+) requests to 127\.0\.0\.1:(\d+): "
    r"min (\d+\.\d) us, median (\d+\.\d) us, max (\d+\.\d) us$")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pysockkit", *args]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True,
                          timeout=scaled(60), env=child_env())


class Serve(Spawned):
    """``python -m pysockkit serve ...`` in the background."""

    def __init__(self, *args: str) -> None:
        super().__init__(cli("serve", *args), env=child_env())

    def address(self) -> tuple[str, int]:
        line = self.readline(scaled(20))
        m = BANNER.match(line)
        assert m, (line, self.finish())
        return m.group(1), int(m.group(2))


@pytest.fixture
def serve() -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def make(*args: str) -> Serve:
        s = Serve(*args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def test_ping_a_served_address_then_ctrl_c_stops_the_server(serve) -> None:
    srv = serve("127.0.0.1:0")
    host, port = srv.address()
    assert port != 0
    r = run("ping", f"{host}:{port}", "-n", "5")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    m = SUMMARY.match(r.stdout.strip())
    assert m, r.stdout
    assert int(m.group(1)) == 5 and int(m.group(2)) == port
    lo, med, hi = (float(m.group(i)) for i in (3, 4, 5))
    assert 0 < lo <= med <= hi
    # it is an echo server speaking the default framing
    with sk.connect((host, port), timeout=STEP_TIMEOUT) as conn:
        assert conn.request(b"echo?", timeout=STEP_TIMEOUT) == b"echo?"
    srv.proc.send_signal(signal.SIGINT)
    out, err = srv.finish(scaled(20))
    assert srv.proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert out.splitlines() == ["served 6 messages"]
    # it closed its listener
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=STEP_TIMEOUT).close()


def test_serve_seconds_stops_on_its_own() -> None:
    t0 = time.monotonic()
    r = run("serve", "127.0.0.1:0", "--seconds", "0.5")
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and BANNER.match(lines[0]), r.stdout
    assert lines[1] == "served 0 messages"
    assert elapsed >= 0.5


def test_ping_with_nothing_listening_fails_with_exit_code_1() -> None:
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run("ping", f"127.0.0.1:{port}", "-n", "1")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("python -m pysockkit ping: ") and "refused" in r.stderr, r.stderr


def test_ping_a_server_that_never_answers_times_out_with_exit_code_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        port = ls.getsockname()[1]
        r = run("ping", f"127.0.0.1:{port}", "-n", "3", "--timeout", "0.3")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("python -m pysockkit ping: ") and "0.3 s" in r.stderr, r.stderr
