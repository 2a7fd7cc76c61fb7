"""Helpers in a private user and network namespace (``unshare -Urn``): start
one, pass its report (and descriptors) back over a SEQPACKET channel, bring
lo up, build socket filters.  Used by the SYN_RCVD-on-fd recipe and by the
conversations (pysockkit/_conversation.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import Timeout
from .recipes import _NS, LabUnavailable
from .scene import _Resources

# How long the on_fd helper may take to start (an interpreter and an
# import in a fresh namespace), on top of the caller's timeout.
_HELPER_STARTUP_S = 10.0


def _netns_helper(target: str, args: Sequence[str], what: str, timeout: float,
                  unshare: str) -> tuple[_Resources, bytes, list[int]]:
    """Run ``unshare -Urn PYTHON -c "import MODULE as m; m.FUNC()" FD ARGS...``:
    a helper in a private user and network namespace (root there, so it
    may bring lo up, attach socket filters and open packet sockets), with
    a SEQPACKET channel on FD.  *target* is ``"module:function"``.
    Returns the resources to release (helper process and channel), the
    helper's report (a message, or the chunks of one: see
    :func:`_send_report`) and the descriptors sent with it.

    Raises :class:`LabUnavailable` when the helper cannot run (no
    sys.executable, no *unshare* command, or unshare fails, as it does
    where unprivileged user namespaces are disabled: the message says
    *what* needs them), and :class:`pysockkit.Timeout` when it does not
    report within *timeout* seconds plus its start-up time.
    """
    if not sys.executable:
        raise LabUnavailable(errno.ENOENT, f"{what}: no sys.executable to run the helper with")
    exe = shutil.which(unshare)
    if exe is None:
        raise LabUnavailable(errno.ENOENT, f"{what} (util-linux): {unshare!r} not found")
    module, _, func = target.partition(":")
    # SEQPACKET: one message per datagram, and EOF when the other end closes
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    res = _Resources()
    res.channel = parent
    try:
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                          if env.get("PYTHONPATH") else "")
        cmd = [exe, "-Urn", sys.executable, "-c",
               f"import {module} as m; m.{func}()", str(child.fileno()), *args]
        try:
            res.proc = subprocess.Popen(
                cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            raise LabUnavailable(exc.errno or errno.ENOENT,
                                 f"{what}: cannot run {exe}: {exc}") from exc
        finally:
            child.close()
        limit = timeout + _HELPER_STARTUP_S
        try:
            msg, fds = _recv_report(parent, limit)
        except socket.timeout:
            raise Timeout(f"lab: the {_NS} helper did not report within "
                          f"{limit:g} s") from None
        for fd in fds:
            res.add(socket.socket(fileno=fd))
        if not msg:
            proc = res.proc
            _, err = proc.communicate(timeout=5.0)
            res.proc = None
            text = err.decode(errors="replace").strip().splitlines()
            raise LabUnavailable(
                errno.EPERM,
                f"{what}: `{exe} -Urn` exited with status {proc.returncode}"
                + (f": {text[-1]}" if text else ""))
        return res, msg, fds
    except BaseException:
        res.close()
        raise


_CHUNK = 60000  # bytes per SEQPACKET message of a long report


def _send_report(chan: socket.socket, data: bytes) -> None:
    """Send a report of any length as chunks: ``+`` before each but the
    last, ``.`` before the last (:func:`_recv_report` joins them)."""
    for i in range(0, max(1, len(data)), _CHUNK):
        last = i + _CHUNK >= len(data)
        chan.send((b"." if last else b"+") + data[i:i + _CHUNK])


def _recv_report(chan: socket.socket, limit: float) -> tuple[bytes, list[int]]:
    """One report from a helper: a single message (with the descriptors
    sent with it), or the chunks of :func:`_send_report` joined.  b""
    if the helper closed its end without a word.  Raises socket.timeout
    after *limit* seconds."""
    deadline = time.monotonic() + limit
    chan.settimeout(limit)
    msg, fds, _, _ = socket.recv_fds(chan, 65536, 4)
    if msg[:1] not in (b"+", b"."):
        return msg, list(fds)
    parts = [msg[1:]]
    while msg[:1] == b"+":
        chan.settimeout(max(0.001, deadline - time.monotonic()))
        msg = chan.recv(_CHUNK + 1)
        if not msg:
            break
        parts.append(msg[1:])
    return b"".join(parts), list(fds)


def _lo_up() -> None:
    """Bring lo up in a fresh network namespace (SIOCSIFFLAGS, IFF_UP)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, ifr)[:18])[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))     # SIOCSIFFLAGS


def _sock_fprog(code: Sequence[tuple[int, int, int, int]]) -> bytes:
    """The ``struct sock_fprog`` for SO_ATTACH_FILTER of a classic BPF
    program given as (code, jt, jf, k) rows.  The code buffer is kept alive
    on the module for the life of the process (the kernel copies it during
    setsockopt, but keep it simple and safe)."""
    import ctypes

    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
    _KEEP.append(buf)
    return struct.pack("HL", len(code), ctypes.addressof(buf))


_KEEP: list[Any] = []


def _helper_start() -> tuple[socket.socket, Callable[..., None], bool]:
    """The start of a netns helper (see :func:`_netns_helper`): its channel
    to the parent (the descriptor in argv[1]), ``fail(kind, text,
    errno=0)`` that reports an error on it (kind: ``"unavailable"``,
    ``"timeout"`` or ``"error"``), and whether lo came up (if not, the
    failure is already reported)."""
    chan = socket.socket(fileno=int(sys.argv[1]))

    def fail(kind: str, text: str, err: int = 0) -> None:
        chan.send(json.dumps({"error": text, "kind": kind, "errno": err}).encode())

    try:
        _lo_up()
    except OSError as exc:
        fail("unavailable", f"cannot bring lo up in the new netns: {exc}", exc.errno or 0)
        return chan, fail, False
    return chan, fail, True
