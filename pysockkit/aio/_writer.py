"""The write path of an aio connection: corked writes, backpressure.

Frames are corked while a loop iteration lasts and go out in one
``transport.write`` when it ends, except that the first 4 KiB corked in an
iteration go out at once, and then each time twice as much is corked (up
to 64 KiB): the peer starts working on the first requests (or replies)
while later ones are still being queued, so the two processes work in
parallel instead of taking turns, and a long burst still costs few
syscalls.  The transport's write buffer has a high-water mark
(``send_limit``); above it the senders wait in :meth:`Writer.drain`, and
``send_nowait`` refuses once far more waits (the peer is not reading).

One :class:`Writer` per connection; ``send``, ``send_nowait``,
``request``, ``reply`` and the heartbeat all write through it.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Optional

from .._errors import Error, Timeout
from ._transport import Waiters, wait, wake

FLUSH_FIRST = 4 * 1024  # the first write of a loop iteration goes out at this size,
FLUSH_MAX = 64 * 1024  # each later one at twice the last, up to this
HARD_FACTOR = 16  # send_nowait refuses beyond send_limit * this (and 16 MiB)


class Writer:
    """The send side of one connection (see the module docstring).

    ``err`` is the error that ended the send side (None while it is open);
    ``paused`` is True while the transport's buffer is above ``send_limit``
    (asyncio's pause_writing); ``last_tx`` is the loop time of the last
    write when ``track`` is on (the heartbeat reads it).

    Example::

        w = Writer(loop, send_limit=1 << 20)
        w.transport = transport
        w.write(encoder.encode(b"hello"))      # goes out when the iteration ends
    """

    __slots__ = ("loop", "transport", "buf", "nbytes", "flush_at", "scheduled", "paused",
                 "waiters", "limit", "hard_limit", "err", "track", "last_tx")

    def __init__(self, loop: asyncio.AbstractEventLoop, send_limit: int) -> None:
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None  # None: not yet made, or lost
        self.buf: list[bytes] = []
        self.nbytes = 0
        self.flush_at = FLUSH_FIRST
        self.scheduled = False
        self.paused = False
        self.waiters: Waiters = []
        self.limit = send_limit  # the transport's high-water mark
        self.hard_limit = max(send_limit * HARD_FACTOR, 16 << 20)
        self.err: Optional[Error] = None
        self.track = False
        self.last_tx = 0.0

    def write(self, frame: bytes) -> None:
        """Queue one encoded frame (see the module docstring for when it
        leaves).  The caller checked ``err``.

        The three lines of this method are the whole per-frame cost; the
        busiest caller (``send_nowait``) repeats them rather than calling
        here, because one more Python call per frame is ~12% of the CPU a
        64-byte stream costs (bench/aio_bench.py).  What happens next is
        decided once, in :meth:`corked`."""
        self.buf.append(frame)
        self.nbytes += len(frame)
        if self.nbytes >= self.flush_at or not self.scheduled:
            self.corked()

    def corked(self) -> None:
        """After a write: flush at once when the corked bytes reached
        flush_at, else make sure the end of the iteration flushes."""
        if self.nbytes >= self.flush_at:
            self.flush_early()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush_cb)

    def flush_early(self) -> None:
        """Write what is corked now (it reached flush_at); the next early
        write in this iteration waits for twice as much."""
        self.flush()
        if self.flush_at < FLUSH_MAX:
            self.flush_at *= 2
        if not self.scheduled:  # the end of the iteration resets it
            self.scheduled = True
            self.loop.call_soon(self.flush_cb)

    def flush_behind(self) -> None:
        """Schedule the flush behind the tasks a read just woke: what they
        queue in answer goes out at the end of this loop iteration, not
        one iteration later."""
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush_cb)

    def flush_cb(self) -> None:
        self.scheduled = False
        self.flush_at = FLUSH_FIRST
        self.flush()

    def flush(self) -> None:
        """Hand what is corked to the transport now."""
        b = self.buf
        if not b:
            return
        data = b[0] if len(b) == 1 else b"".join(b)
        b.clear()
        self.nbytes = 0
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(data)
        if self.track:
            self.last_tx = self.loop.time()

    def drop(self) -> None:
        """Forget what is corked (abort, or the connection was lost)."""
        self.buf.clear()
        self.nbytes = 0

    @property
    def size(self) -> int:
        """Bytes corked here and buffered in the transport."""
        t = self.transport
        return self.nbytes + (t.get_write_buffer_size() if t is not None else 0)

    def check(self) -> None:
        """Raise the error that ended the send side, or ENOBUFS when far
        more than send_limit waits (send_nowait's bound)."""
        if self.err is not None:
            raise self.err
        if self.paused:
            size = self.size
            if size > self.hard_limit:
                raise Error(
                    errno.ENOBUFS,
                    f"send_nowait: {size} bytes wait to be sent and the peer is not reading; "
                    "await conn.drain() (or use await conn.send()) before queueing more")

    def resume(self) -> None:
        """The transport's buffer went below the low-water mark."""
        self.paused = False
        wake(self.waiters)

    def fail(self, err: Error) -> None:
        """End the send side with err (if not ended yet); wake the drainers."""
        if self.err is None:
            self.err = err
        wake(self.waiters)

    async def drain(self, timeout: Optional[float], what: str) -> None:
        """Write what is corked and wait while the transport is paused;
        ``sk.Timeout`` (naming *what*) after *timeout* seconds: the data
        stays queued."""
        self.flush()
        loop = self.loop
        deadline = None if timeout is None else loop.time() + timeout
        while self.paused:
            if self.err is not None:
                raise self.err
            if not await wait(loop, self.waiters, deadline) and self.paused:
                raise Timeout(
                    f"{what}: the peer did not read for {timeout} s; the data stays queued "
                    "and will be sent (nothing was lost)")
        if self.err is not None:
            raise self.err
