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


def wait_until(pred: Callable[[], bool], timeout: float = scaled(5.0), interval: float = 0.005) -> bool:
    """Poll pred until it is true or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(interval)


# numbers of the syscalls a pysockkit call sleeps in, by architecture
_WAIT_SYSCALLS = {
    "x86_64": {"7": "poll", "271": "ppoll", "202": "futex", "232": "epoll_wait",
               "281": "epoll_pwait", "45": "recvfrom", "288": "accept4"},
    "aarch64": {"73": "ppoll", "98": "futex", "22": "epoll_pwait", "207": "recvfrom",
                "242": "accept4"},
}


def threads_now() -> int:
    """Threads of this process, as the kernel counts them."""
    return len(os.listdir("/proc/self/task"))


def waiting_call(proc_task: str) -> Optional[tuple[str, list[int]]]:
    """The wait syscall the task at ``proc_task`` (e.g. /proc/self/task/TID
    or /proc/PID) sleeps in and its six arguments, per its ``syscall``
    file; None while it runs, sits in another syscall, or is gone."""
    try:
        with open(f"{proc_task}/syscall") as f:
            fields = f.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = _WAIT_SYSCALLS.get(os.uname().machine, {}).get(fields[0]) if fields else None
    if name is None or len(fields) < 7:
        return None
    return name, [int(a, 16) for a in fields[1:7]]


def sleeping_in(proc_task: str) -> Optional[str]:
    """The name of the wait syscall the task at ``proc_task`` sleeps in
    (see waiting_call), or None."""
    call = waiting_call(proc_task)
    return call[0] if call is not None else None


def wait_sleeping_in(proc_task: str, names: Iterable[str], timeout: float = STEP_TIMEOUT) -> None:
    """Wait until the task at ``proc_task`` sleeps in one of the syscalls
    ``names`` (a blocking call has really started), instead of sleeping for
    a while and hoping it got there."""
    wanted = set(names)
    if not wait_until(lambda: sleeping_in(proc_task) in wanted, timeout=timeout, interval=0.001):
        raise AssertionError(f"{proc_task} does not sleep in {sorted(wanted)} after {timeout} s")


# the syscalls a pysockkit call sleeps in while it waits for its socket:
# poll, or recv / accept4 on a socket made blocking (a receive or an accept
# with 20 ms or more to wait: csrc/core/io.c sk_conn_wait_fill,
# csrc/core/accept.h)
SOCKET_WAITS = ("poll", "ppoll", "recvfrom", "accept4")


def wait_blocked_on_socket(thread: threading.Thread, timeout: float = STEP_TIMEOUT) -> None:
    """Wait until ``thread`` sleeps in one of SOCKET_WAITS: a pysockkit call
    that holds its lock and waits for the socket."""
    assert thread.native_id is not None, "thread not started"
    wait_sleeping_in(f"/proc/self/task/{thread.native_id}", SOCKET_WAITS, timeout)


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


def kernel_queues(fd: int) -> tuple[int, int]:
    """(bytes in the socket's receive queue not yet read, bytes in its send
    queue not yet acknowledged by the peer), as the kernel counts them
    (ioctl SIOCINQ and SIOCOUTQ): an independent view of what a connection
    has really taken or sent."""
    import fcntl
    import termios

    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)  # SIOCINQ
    inq = int.from_bytes(buf, sys.byteorder, signed=True)
    fcntl.ioctl(fd, termios.TIOCOUTQ, buf)  # SIOCOUTQ
    outq = int.from_bytes(buf, sys.byteorder, signed=True)
    return inq, outq


def settled_queues(fds: Iterable[int], timeout: float = STEP_TIMEOUT) -> list[tuple[int, int]]:
    """kernel_queues() of each fd, once two readings 20 ms apart agree
    (loopback has moved every byte it can move): a consistent snapshot."""
    fds = list(fds)
    deadline = time.monotonic() + timeout
    last = [kernel_queues(fd) for fd in fds]
    while True:
        time.sleep(0.02)
        now = [kernel_queues(fd) for fd in fds]
        if now == last:
            return now
        if time.monotonic() >= deadline:
            raise AssertionError(f"socket queues still moving after {timeout} s: {now}")
        last = now


# --------------------------------------------------------------- tcp_info

# struct tcp_info as Linux 6.18 lays it out (include/uapi/linux/tcp.h),
# written down here with struct codes so that pysockkit's C decoder
# (csrc/tcpinfo.c) is checked against an independent reading of the same
# bytes.  (kernel name, offset, struct code); the bitfields of bytes 6 and
# 7 are (name, byte, shift, width) in TCP_INFO_BITS.  The last 4 bytes
# (276..279) changed meaning in 7.0, so they are left out.
TCP_INFO_LAYOUT: tuple[tuple[str, int, str], ...] = (
    ("state", 0, "B"), ("ca_state", 1, "B"), ("retransmits", 2, "B"), ("probes", 3, "B"),
    ("backoff", 4, "B"), ("options", 5, "B"),
    ("rto", 8, "I"), ("ato", 12, "I"), ("snd_mss", 16, "I"), ("rcv_mss", 20, "I"),
    ("unacked", 24, "I"), ("sacked", 28, "I"), ("lost", 32, "I"), ("retrans", 36, "I"),
    ("fackets", 40, "I"),
    ("last_data_sent", 44, "I"), ("last_ack_sent", 48, "I"), ("last_data_recv", 52, "I"),
    ("last_ack_recv", 56, "I"),
    ("pmtu", 60, "I"), ("rcv_ssthresh", 64, "I"), ("rtt", 68, "I"), ("rttvar", 72, "I"),
    ("snd_ssthresh", 76, "I"), ("snd_cwnd", 80, "I"), ("advmss", 84, "I"),
    ("reordering", 88, "I"), ("rcv_rtt", 92, "I"), ("rcv_space", 96, "I"),
    ("total_retrans", 100, "I"),
    ("pacing_rate", 104, "Q"), ("max_pacing_rate", 112, "Q"), ("bytes_acked", 120, "Q"),
    ("bytes_received", 128, "Q"), ("segs_out", 136, "I"), ("segs_in", 140, "I"),
    ("notsent_bytes", 144, "I"), ("min_rtt", 148, "I"), ("data_segs_in", 152, "I"),
    ("data_segs_out", 156, "I"), ("delivery_rate", 160, "Q"), ("busy_time", 168, "Q"),
    ("rwnd_limited", 176, "Q"), ("sndbuf_limited", 184, "Q"), ("delivered", 192, "I"),
    ("delivered_ce", 196, "I"), ("bytes_sent", 200, "Q"), ("bytes_retrans", 208, "Q"),
    ("dsack_dups", 216, "I"), ("reord_seen", 220, "I"), ("rcv_ooopack", 224, "I"),
    ("snd_wnd", 228, "I"), ("rcv_wnd", 232, "I"), ("rehash", 236, "I"),
    ("total_rto", 240, "H"), ("total_rto_recoveries", 242, "H"), ("total_rto_time", 244, "I"),
    ("received_ce", 248, "I"), ("delivered_e1_bytes", 252, "I"),
    ("delivered_e0_bytes", 256, "I"), ("delivered_ce_bytes", 260, "I"),
    ("received_e1_bytes", 264, "I"), ("received_e0_bytes", 268, "I"),
    ("received_ce_bytes", 272, "I"),
)
TCP_INFO_BITS: tuple[tuple[str, int, int, int], ...] = (
    ("snd_wscale", 6, 0, 4), ("rcv_wscale", 6, 4, 4),
    ("delivery_rate_app_limited", 7, 0, 1), ("fastopen_client_fail", 7, 1, 2),
)
# tcpi_last_*: "milliseconds ago", so they grow between two readings
TCP_INFO_CLOCKS = frozenset({"last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv"})


def tcp_info_raw(sock: socket.socket) -> bytes:
    """The kernel's struct tcp_info bytes, through the stdlib only."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)


def decode_tcp_info(data: bytes) -> dict[str, int]:
    """Reference decoder: {kernel name: value} for every field of
    TCP_INFO_LAYOUT / TCP_INFO_BITS that lies wholly inside ``data``."""
    out: dict[str, int] = {}
    for name, off, code in TCP_INFO_LAYOUT:
        size = struct.calcsize(code)
        if off + size <= len(data):
            (out[name],) = struct.unpack_from("=" + code, data, off)
    for name, byte, shift, width in TCP_INFO_BITS:
        if byte < len(data):
            out[name] = (data[byte] >> shift) & ((1 << width) - 1)
    return out


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
