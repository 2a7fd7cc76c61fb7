"""What the aio connection needs from asyncio and the socket: the receive
buffer, parked waiters, socket ioctls and options, and the mapping of a
lost transport to a pysockkit error.

Nothing here knows frames; :mod:`.connection` and its parts do.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Optional

from .._errors import ConnectionClosed, ConnectionReset, Error

READ_CHUNK = 256 * 1024  # the receive buffer handed to the transport (one per thread)


def ioctl_int(fd: int, request: int) -> int:
    """An int-valued ioctl on fd (FIONREAD, TIOCOUTQ); 0 when it fails.

    Example::

        unread = ioctl_int(conn.fileno(), termios.FIONREAD)
    """
    try:
        buf = fcntl.ioctl(fd, request, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", buf)[0])


def sockopt(fd: int, how: Callable[[socket.socket], None]) -> None:
    """Run ``how`` on a duplicate of fd: socket options and shutdown act on
    the socket, not the descriptor, and this works with every event loop
    (uvloop's transports expose no real socket object).

    Example::

        sockopt(fd, lambda s: s.shutdown(socket.SHUT_RD))
    """
    with socket.socket(fileno=os.dup(fd)) as s:
        how(s)


def lost_error(exc: Optional[BaseException]) -> Error:
    """Map what asyncio's connection_lost() got to a pysockkit error.

    Example::

        >>> lost_error(None)
        ConnectionClosed('the connection is closed')
    """
    if exc is None:
        return ConnectionClosed("the connection is closed")
    if isinstance(exc, Error):
        return exc
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        code = exc.errno or errno.ECONNRESET
        return ConnectionReset(code, f"the peer reset the connection ({os.strerror(code)})")
    if isinstance(exc, OSError) and exc.errno:
        return Error(exc.errno, f"connection failed: {exc.strerror or exc}")
    return ConnectionClosed(f"the connection failed: {exc!r}")


_tls = threading.local()


def read_buffer() -> memoryview:
    """This thread's receive buffer, shared by every connection of its loop:
    the transport calls get_buffer, reads into it and calls buffer_updated
    back to back, and the decoder copies what it keeps, so one buffer per
    thread serves all (a connection costs no 256 KiB of its own).

    Example::

        mv = read_buffer()      # the same object for every call in this thread
    """
    mv: Optional[memoryview] = getattr(_tls, "buf", None)
    if mv is None:
        mv = _tls.buf = memoryview(bytearray(READ_CHUNK))
    return mv


Waiters = list["asyncio.Future[bool]"]


def wake(waiters: Waiters, value: bool = True) -> None:
    """Resolve every parked waiter with *value* and forget them.

    Example::

        wake(self._waiters)          # what a reader parked in wait() sees: True
    """
    for w in waiters:
        if not w.done():
            w.set_result(value)
    waiters.clear()


def _timed_out(fut: "asyncio.Future[bool]") -> None:
    if not fut.done():
        fut.set_result(False)


async def wait(loop: asyncio.AbstractEventLoop, waiters: Waiters,
               deadline: Optional[float]) -> bool:
    """Park a future in *waiters* until :func:`wake` resolves it (its
    value) or the loop's clock reaches *deadline* (False).  Cancel-safe: a
    cancelled wait takes its future out of *waiters* and nothing else.

    Example::

        while not queue:
            if not await wait(loop, waiters, deadline) and not queue:
                raise Timeout("...")
    """
    fut: asyncio.Future[bool] = loop.create_future()
    waiters.append(fut)
    h = None if deadline is None else loop.call_at(deadline, _timed_out, fut)
    try:
        return await fut
    finally:
        if h is not None:
            h.cancel()
        if not fut.done():  # cancelled: leave the rest alone
            fut.cancel()
            try:
                waiters.remove(fut)
            except ValueError:
                pass
