"""assert_frames: receive frames and check that they are exactly the
expected ones, in order, with nothing more behind them."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

from .._errors import Error, Timeout
from .._net import check_timeout
from .._types import Framing

def _short(b: bytes, limit: int = 60) -> str:
    r = repr(b)
    if len(r) > limit:
        r = r[: limit - 5] + "...'" + f" ({len(b)} bytes)"
    return r


def _recv_exact_stdlib(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Timeout(f"got {len(buf)} of {n} bytes of a frame in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            continue
        if not chunk:
            from .._errors import ConnectionClosed, IncompleteFrame

            if buf:
                exc = IncompleteFrame(f"stream ended {n - len(buf)} bytes short of a frame")
                exc.missing = n - len(buf)  # type: ignore[attr-defined]
                raise exc
            raise ConnectionClosed("the peer closed the stream")
        buf += chunk
    return bytes(buf)


def _stdlib_reader(sock: socket.socket, framing: Framing) -> Callable[[float], bytes]:
    def read(deadline: float) -> bytes:
        head = _recv_exact_stdlib(sock, framing.header_size, deadline)
        n = int.from_bytes(head, framing.byteorder)
        if n > framing.max_frame:
            from .._errors import FrameTooLarge

            raise FrameTooLarge(f"header announces {n} bytes > max_frame {framing.max_frame}")
        try:
            return _recv_exact_stdlib(sock, n, deadline)
        except Error as exc:
            if isinstance(exc, Timeout):
                raise
            from .._errors import IncompleteFrame

            raise IncompleteFrame(f"stream ended inside a {n}-byte frame") from exc

    return read


def _stdlib_has_more(sock: socket.socket) -> int:
    """Bytes already readable on sock without blocking (0 at EOF)."""
    sock.settimeout(0.0)
    try:
        return len(sock.recv(65536, socket.MSG_PEEK))
    except (BlockingIOError, socket.timeout):
        return 0
    except OSError:
        return 0


def assert_frames(
    conn: Any,
    expected: Sequence[Union[bytes, bytearray, memoryview]],
    within: float = 1.0,
    *,
    exact: bool = True,
    settle: float = 0.0,
    framing: Optional[Framing] = None,
) -> list[bytes]:
    """Receive ``len(expected)`` frames on ``conn`` within ``within``
    seconds and check they are ``expected``, in order; with ``exact``
    (the default) also check that no further frame is already there, after
    waiting ``settle`` seconds for one.  Returns the frames received.

    ``conn`` is a pysockkit ``Connection`` or a stdlib socket (read with
    ``framing``, by default ``sk.Framing()``).  The failure message shows
    what arrived, where it first differs, and how the stream ended if it
    did (``ConnectionClosed``, ``IncompleteFrame``, ``ConnectionReset``).

    Example::

        >>> cli.send_many([b"a", b"b"])
        2
        >>> assert_frames(peer, [b"a", b"b"], within=1.0)
        [b'a', b'b']
    """
    __tracebackhide__ = True
    within = check_timeout(within, "within", allow_none=False)
    settle = check_timeout(settle, "settle", allow_none=False)
    want = [bytes(x) for x in expected]
    deadline = time.monotonic() + within
    is_stdlib = isinstance(conn, socket.socket)
    old_timeout = conn.gettimeout() if is_stdlib else None
    try:
        return _assert_frames(conn, want, deadline, exact, settle, framing, is_stdlib)
    finally:
        if is_stdlib:
            conn.settimeout(old_timeout)


def _assert_frames(
    conn: Any,
    want: list[bytes],
    deadline: float,
    exact: bool,
    settle: float,
    framing: Optional[Framing],
    is_stdlib: bool,
) -> list[bytes]:
    __tracebackhide__ = True
    got: list[bytes] = []
    problem: Optional[BaseException] = None
    if is_stdlib:
        read = _stdlib_reader(conn, framing or Framing())

        def recv_one(dl: float) -> bytes:
            return read(dl)
    else:

        def recv_one(dl: float) -> bytes:
            return bytes(conn.recv(timeout=max(0.0, dl - time.monotonic())))

    try:
        while len(got) < len(want):
            got.append(recv_one(deadline))
    except (Error, OSError) as exc:
        problem = exc
    extra: Optional[str] = None
    if problem is None and exact:
        if settle > 0:
            time.sleep(settle)
        if is_stdlib:
            n = _stdlib_has_more(conn)
            if n:
                extra = f"{n} more byte(s) already received after the last expected frame"
        else:
            try:
                more = conn.recv(timeout=0)
                extra = f"an extra frame {_short(bytes(more))} after the last expected one"
            except Timeout:
                pass
            except Error:
                pass  # closed or reset right after: no extra frame
    if problem is None and extra is None and got == want:
        return got
    lines = [f"expected {len(want)} frame(s), received {len(got)}:"]
    for i in range(max(len(want), len(got))):
        w = _short(want[i]) if i < len(want) else "-"
        g = _short(got[i]) if i < len(got) else "-"
        mark = "  " if i < len(want) and i < len(got) and want[i] == got[i] else "!="
        lines.append(f"  [{i}] {mark} expected {w}, got {g}")
    if problem is not None:
        lines.append(f"then: {type(problem).__name__}: {problem}")
    if extra is not None:
        lines.append(f"then: {extra}")
    raise AssertionError("\n".join(lines))
