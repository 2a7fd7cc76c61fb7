"""Plain-stdlib helpers for the pysockkit test suite.

Everything here talks TCP through the standard library only (``socket`` and
``struct``), so it is an independent reference for the wire format:
``[length][payload]`` where ``length`` is an unsigned integer of
``header_size`` bytes (1, 2, 4 or 8) in big or little byte order.

Nothing here imports pysockkit at module level except for typing and the
child-process environment helper, so a broken build shows up as test
failures, not as a collection error of this module.
"""

from __future__ import annotations

import os
import random
import select
import site
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent

_STRUCT_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}
_STRUCT_ORDER = {"big": ">", "little": "<"}

# One time scale for the whole suite: every timing bound in a test is
# written as scaled(seconds), so a slow or loaded machine (or the sanitizer
# pass, which sets it higher) stretches them all at once.  Set
# PYSOCKKIT_TIME_SCALE=3 to triple every bound.  Lower bounds (something
# must take at least N s) are not scaled.
TIME_SCALE = float(os.environ.get("PYSOCKKIT_TIME_SCALE", "1") or "1")
if not TIME_SCALE >= 1.0:
    raise ValueError(f"PYSOCKKIT_TIME_SCALE must be a number >= 1, not {TIME_SCALE!r}")


def scaled(seconds: float) -> float:
    """An upper time bound of ``seconds``, stretched by PYSOCKKIT_TIME_SCALE."""
    return seconds * TIME_SCALE


# Upper bound for any single blocking step in a test; a failure shows up as
# an exception after this long instead of a hung suite.
STEP_TIMEOUT = scaled(10.0)


# ------------------------------------------------------------------ codec


def header_struct(header_size: int = 4, byteorder: str = "big") -> struct.Struct:
    """The struct.Struct of a length header."""
    return struct.Struct(_STRUCT_ORDER[byteorder] + _STRUCT_CODE[header_size])


def encode(payload: bytes, header_size: int = 4, byteorder: str = "big") -> bytes:
    """One frame, encoded with struct only (independent of pysockkit)."""
    return header_struct(header_size, byteorder).pack(len(payload)) + payload


def encode_header(length: int, header_size: int = 4, byteorder: str = "big") -> bytes:
    """A bare length header; ``length`` may exceed any max_frame."""
    return header_struct(header_size, byteorder).pack(length)


def decode_stream(
    data: bytes, header_size: int, byteorder: str, max_frame: int
) -> tuple[list[bytes], str, int]:
    """Reference decoder for a whole stream that then ends (EOF).

    Returns (frames, outcome, detail): outcome is "closed" (clean EOF at a
    frame boundary, detail 0), "too_large" (detail = declared length) or
    "incomplete" (detail = bytes missing, header bytes while the header
    itself is incomplete).
    """
    hs = header_struct(header_size, byteorder)
    frames: list[bytes] = []
    pos = 0
    while True:
        left = len(data) - pos
        if left == 0:
            return frames, "closed", 0
        if left < header_size:
            return frames, "incomplete", header_size - left
        (n,) = hs.unpack_from(data, pos)
        if n > max_frame:
            return frames, "too_large", n
        if left - header_size < n:
            return frames, "incomplete", n - (left - header_size)
        frames.append(data[pos + header_size : pos + header_size + n])
        pos += header_size + n


def random_payloads(
    rng: random.Random, count: int, max_size: int, large: Iterable[int] = ()
) -> list[bytes]:
    """``count`` payloads of random sizes in [0, max_size] (including 0 and
    max_size), plus the sizes in ``large``, shuffled, with random content."""
    sizes = [0, max_size, 1] + [rng.randint(0, max_size) for _ in range(count - 3)]
    sizes += list(large)
    rng.shuffle(sizes)
    return [rng.randbytes(n) for n in sizes]


def random_splits(rng: random.Random, data: bytes, max_chunk: int) -> list[bytes]:
    """Cut data into chunks of random sizes in [1, max_chunk]."""
    out = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        out.append(data[pos : pos + n])
        pos += n
    return out


# --------------------------------------------------------------- raw peer


def recv_exact(sock: socket.socket, n: int, timeout: float = STEP_TIMEOUT) -> bytes:
    """Read exactly n bytes or raise (EOFError on a short stream, or
    socket.timeout when the whole read takes longer than ``timeout``)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout(f"recv_exact: got {len(buf)} of {n} bytes in {timeout} s")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"recv_exact: EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(sock: socket.socket, timeout: float = STEP_TIMEOUT) -> bytes:
    """Read until EOF."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("recv_all: no EOF in time")
        sock.settimeout(left)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk


def recv_frame(
    sock: socket.socket,
    header_size: int = 4,
    byteorder: str = "big",
    timeout: float = STEP_TIMEOUT,
) -> bytes:
    """Read one frame with the stdlib only."""
    hs = header_struct(header_size, byteorder)
    (n,) = hs.unpack(recv_exact(sock, header_size, timeout))
    return recv_exact(sock, n, timeout)


class RawPeer:
    """A stdlib socket speaking the frame format by hand."""

    def __init__(self, sock: socket.socket, header_size: int = 4, byteorder: str = "big"):
        self.sock = sock
        self.header_size = header_size
        self.byteorder = byteorder

    def send_frame(self, payload: bytes) -> None:
        self.sock.settimeout(STEP_TIMEOUT)
        self.sock.sendall(encode(payload, self.header_size, self.byteorder))

    def recv_frame(self, timeout: float = STEP_TIMEOUT) -> bytes:
        return recv_frame(self.sock, self.header_size, self.byteorder, timeout)

    def close(self) -> None:
        self.sock.close()


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ---------------------------------------------------------------- threads


class BgThread(threading.Thread):
    """A daemon thread whose exception (or result) is handed to join_result()."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: Optional[str] = None):
        super().__init__(daemon=True, name=name)
        self._fn = target
        self._args = args
        self.result: Any = None
        self.exc: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self._fn(*self._args)
        except BaseException as exc:  # handed to the test thread
            self.exc = exc

    def join_result(self, timeout: float = STEP_TIMEOUT) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout} s")
        if self.exc is not None:
            raise self.exc
        return self.result


def start_thread(target: Callable[..., Any], *args: Any, name: Optional[str] = None) -> BgThread:
    t = BgThread(target, *args, name=name)
    t.start()
    return t


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll pred until it is true or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(interval)


# ----------------------------------------------------------------- system


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmSize, ...) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def vmrss_kib() -> int:
    """Resident set size of this process in KiB."""
    return proc_status_kib("VmRSS")


def child_env() -> dict[str, str]:
    """Environment for a child ``python -c`` that must import the same
    pysockkit as this test process.

    os.environ is passed through.  If the pysockkit imported here lives
    outside site-packages (the repo with an in-place build, or a dev copy),
    its parent directory is prepended to PYTHONPATH; a pip-installed
    pysockkit is found by the child on its own.
    """
    import pysockkit

    env = dict(os.environ)
    pkg_parent = str(Path(pysockkit.__file__).resolve().parent.parent)
    site_dirs = set()
    try:
        site_dirs.update(str(Path(p).resolve()) for p in site.getsitepackages())
    except AttributeError:  # virtualenv's old site.py
        pass
    try:
        site_dirs.add(str(Path(site.getusersitepackages()).resolve()))
    except AttributeError:
        pass
    if pkg_parent not in site_dirs:
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + old if old else "")
    return env


class Spawned:
    """A child process (``subprocess.Popen(argv, **kw)``, stdout and stderr
    piped) whose stdout is read line by line with a deadline: os.read, so
    that nothing hides in a buffer while the child blocks."""

    def __init__(self, argv: list[str], **kw: Any) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        self._out = b""

    def readline(self, timeout: float) -> str:
        """The next stdout line, or "" after ``timeout`` seconds or at EOF."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return line.decode()

    def finish(self, timeout: float = 5.0) -> tuple[str, str]:
        """Wait for the exit (killed after ``timeout``): (stdout not read
        yet, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        rest, self._out = self._out, b""
        return (rest + out).decode(), err.decode()

    def stop(self) -> None:
        """Kill the child if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


PYTHON = sys.executable
