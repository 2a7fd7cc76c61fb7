"""Helpers of the hardening tests (issue 7): a server in a child process,
and process measurements (descriptors, threads, RSS, C heap).

Used by tests/test_leaks.py, tests/test_malformed.py,
tests/test_stress_threads.py and bench/load.py.  Stdlib only, plus
pysockkit in the child.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from helpers import scaled

HERE = Path(__file__).resolve().parent
SERVE_CHILD = str(HERE / "serve_child.py")


# ------------------------------------------------------------ measurements


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def proc_status(pid: Optional[int] = None) -> dict[str, str]:
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def rss_kib(pid: Optional[int] = None) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def threads(pid: Optional[int] = None) -> int:
    return int(proc_status(pid)["Threads"])


def under_sanitizer() -> bool:
    """True when AddressSanitizer's runtime is loaded (the sanitizer build
    of tests/run_hardening.sh): RSS and glibc's heap figures then mean
    nothing (quarantine, shadow memory)."""
    with open("/proc/self/maps") as f:
        return "libasan" in f.read()


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]


_libc = ctypes.CDLL(None)
_asan_allocated: Optional[Callable[[], int]] = None
try:  # the sanitizer runtime's own count, when it is loaded
    _f = _libc.__sanitizer_get_current_allocated_bytes
    _f.restype = ctypes.c_size_t
    _asan_allocated = _f
except AttributeError:
    pass
try:
    _libc.mallinfo2.restype = _Mallinfo2
    _have_mallinfo2 = True
except AttributeError:  # glibc < 2.33
    _have_mallinfo2 = False


def c_heap_bytes() -> int:
    """Bytes the C allocator has handed out and not had back (malloc in use:
    glibc's mallinfo2 uordblks + hblkhd, or ASan's count under the
    sanitizer build).  Covers the C core's buffers and CPython's large
    objects; CPython's small objects are counted by sys.getallocatedblocks."""
    if _asan_allocated is not None:
        return int(_asan_allocated())
    if _have_mallinfo2:
        m = _libc.mallinfo2()
        return int(m.uordblks + m.hblkhd)
    return 0


def malloc_trim() -> None:
    """Give free heap pages back to the kernel, so RSS shows what is used."""
    if _asan_allocated is None:
        _libc.malloc_trim(0)


def settle() -> None:
    gc.collect()
    gc.collect()
    malloc_trim()


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``want`` (up to the hard
    limit; a privileged process may raise the hard limit too).  Returns the
    soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    if hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    new = min(want, hard) if hard != resource.RLIM_INFINITY else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


# ------------------------------------------------------------ child server


class ChildServer:
    """``sk.serve`` (echo) in a child process (tests/serve_child.py), or
    with ``mode="hold"`` a thread that echoes each client's first frame and
    keeps its connection until ``release()``.

    ``stats()`` returns its rss_kib, fds, threads, conns, served and error
    counts; ``close()`` stops it and waits for the process.  A context
    manager.  ``pythonpath`` defaults to the directory the imported
    pysockkit comes from, so the child runs the same build.
    """

    def __init__(self, header_size: int = 4, max_frame: int = 16 * 2**20, max_seconds: float = 300.0,
                 mode: str = "serve", read_timeout: Optional[float] = None,
                 write_timeout: Optional[float] = None, max_connections: Optional[int] = None,
                 workers: int = 1):
        import pysockkit

        env = dict(os.environ)
        pkg_parent = str(Path(pysockkit.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, SERVE_CHILD, "--mode", mode, "--header-size", str(header_size),
             "--max-frame", str(max_frame), "--max-seconds", str(max_seconds),
             "--workers", str(workers)]
            + [arg for name, v in (("--read-timeout", read_timeout), ("--write-timeout", write_timeout),
                                   ("--max-connections", max_connections))
               if v is not None for arg in (name, str(v))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.close()
            raise RuntimeError(f"serve_child did not start: {line!r}")
        self.address = ("127.0.0.1", int(line.split()[1]))
        self.header_size = header_size
        self.max_frame = max_frame

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _cmd(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"serve_child exited (status {self.proc.poll()})")
        return json.loads(line)

    def stats(self, trim: bool = False, ports: bool = False) -> dict[str, Any]:
        """The child's stats (serve_child.py); ``trim`` first gives free heap
        back to the kernel, ``ports`` adds the held connections' peer ports."""
        return self._cmd("trim" if trim else "ports" if ports else "stats")

    def release(self) -> dict[str, Any]:
        """Hold mode: close every held connection; returns stats."""
        return self._cmd("release")

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = scaled(10.0),
                 trim: bool = False, ports: bool = False) -> dict[str, Any]:
        """Poll stats() until pred(stats) holds; returns the last stats."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats(trim, ports)
            if pred(st) or time.monotonic() >= deadline:
                return st
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> "ChildServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def error_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Server errors that appeared between two stats() snapshots."""
    out = {}
    for k, v in after["errors"].items():
        d = v - before["errors"].get(k, 0)
        if d:
            out[k] = d
    return out
