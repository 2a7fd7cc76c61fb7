"""Every script in examples/ runs and prints what it promises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pysockkit as sk
from helpers import scaled

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(name: str, *args: str, timeout: float = scaled(30.0)) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart() -> None:
    out = _run("quickstart.py")
    assert "recv    -> b'HELLO'" in out
    assert "request -> b'PING'" in out
    assert "batch   -> [b'A', b'B', b'C']" in out
    assert "call    -> b'SHORT CONNECTION'" in out


def test_plain_peer() -> None:
    assert "pysockkit got hello from the stdlib" in _run("plain_peer.py")


def test_half_close() -> None:
    out = _run("half_close.py")
    assert "server got     : b'all my data'" in out
    assert "FIN (ConnectionClosed)" in out
    assert "client still reads: b'reply after FIN'" in out
    assert "RST (ConnectionReset)" in out


def test_echo_server_process_answers_and_stops_on_sigint() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "--seconds", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        host, port = line.split()[-1].rsplit(":", 1)
        assert sk.call((host, int(port)), b"echo me", timeout=scaled(5.0)) == b"echo me"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=scaled(10))
        assert proc.returncode == 0, err
        assert "served 1 messages" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("examples_dir", [EXAMPLES])
def test_every_example_is_tested(examples_dir: Path) -> None:
    tested = {"quickstart.py", "plain_peer.py", "half_close.py", "echo_server.py"}
    present = {p.name for p in examples_dir.glob("*.py")}
    # a new example must get a test here (or in the test of its feature)
    covered = tested | {n for n in present if _has_own_test(n)}
    assert present <= covered, present - covered


def _has_own_test(name: str) -> bool:
    stem = name[: -len(".py")]
    for t in (ROOT / "tests").glob("test_*.py"):
        if t.name != "test_examples.py" and stem in t.read_text():
            return True
    return False


def test_tour_runs() -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pysockkit", "tour"],
        capture_output=True,
        text=True,
        timeout=scaled(120),
        cwd=os.path.expanduser("~"),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for marker in ("long connection", "sk.Timeout", "its own reply", "short connections",
                   "shutdown('write')", "sk.ConnectionReset", "sk.PeerDead after",
                   "of 13 reproduced", "async duplex", "pysockkit.aio", "async simplex", "tour finished"):
        assert marker in out, marker
    assert time.monotonic() - t0 < scaled(120)
