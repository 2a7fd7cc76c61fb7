"""The receive queue of an aio connection: bounded, cancel-safe.

Every read is decoded into the list of complete frames at once, and the
list is appended to the queue in one step.  ``recv`` only pops the queue;
a receiver that has to wait parks a future that is resolved once per read
(not per frame), and a cancelled or timed-out wait never takes a frame out
of the queue, so cancelling a ``recv`` loses no byte.  The queue is
bounded (``recv_limit`` bytes): above it the transport stops reading and
TCP's window pushes back on the peer; below half of it reading resumes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Optional

from .._errors import Error, Timeout
from ._transport import Waiters, read_buffer, wait, wake


class Receiver:
    """The receive side of one connection (see the module docstring).

    ``q`` holds the frames not read yet; ``err`` is the error that ends
    the receive side once ``q`` is empty; ``eof`` is True once the peer
    sent FIN; ``discard`` is True while a lingering close reads and drops
    what still arrives.  The queued bytes are known without a per-frame
    cost: each read appends (frames ever queued at its end, its bytes) to
    ``batches``.

    Example::

        rx = Receiver(loop, recv_limit=1 << 20)
        rx.transport = transport
        woke = rx.queue(frames, nbytes)     # from the protocol's buffer_updated
    """

    __slots__ = ("loop", "transport", "mv", "q", "total", "batches", "qbytes", "limit",
                 "paused", "pauses", "waiters", "err", "eof", "discard")

    def __init__(self, loop: asyncio.AbstractEventLoop, recv_limit: int) -> None:
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None  # None: not yet made, or lost
        self.mv = read_buffer()
        self.q: deque[Any] = deque()
        self.total = 0
        self.batches: deque[tuple[int, int]] = deque()
        self.qbytes = 0
        self.limit = recv_limit
        self.paused = False
        self.pauses = 0  # times reading paused (stats: read_pauses)
        self.waiters: Waiters = []
        self.err: Optional[Error] = None
        self.eof = False
        self.discard = False

    def queue(self, frames: list[Any], nbytes: int) -> bool:
        """Queue the frames of one read (nbytes on the wire), pause reading
        above the limit, wake the receivers; True if any was waiting."""
        q = self.q
        if not q:
            self.batches.clear()
            self.qbytes = 0
        q.extend(frames)
        self.total += len(frames)
        self.batches.append((self.total, nbytes))
        self.qbytes += nbytes
        if self.qbytes > self.limit:
            self.trim()
            if self.qbytes > self.limit and not self.paused:
                self.paused = True
                self.pauses += 1
                assert self.transport is not None
                self.transport.pause_reading()
        if self.waiters:
            wake(self.waiters)
            return True
        return False

    def trim(self) -> None:
        """Forget the reads whose frames were all consumed."""
        popped = self.total - len(self.q)
        b = self.batches
        while b and b[0][0] <= popped:
            self.qbytes -= b.popleft()[1]

    def maybe_resume(self) -> None:
        """Resume reading once the queue is down to half the limit."""
        self.trim()
        if self.qbytes <= self.limit // 2 and self.paused:
            self.paused = False
            if self.transport is not None and not self.discard and self.err is None:
                self.transport.resume_reading()

    @property
    def queued_bytes(self) -> int:
        self.trim()
        return self.qbytes if self.q else 0

    def fail(self, err: Error, pause: bool = True) -> None:
        """The receive side is over (after the queue): bad frame, EOF,
        EOF mid-frame, a dead peer, the connection lost."""
        if self.err is None:
            self.err = err
        if pause and self.transport is not None:
            self.transport.pause_reading()
        wake(self.waiters)

    async def wait_frames(self, timeout: Optional[float]) -> None:
        """Return once the queue holds a frame; a waiter never takes one."""
        loop = self.loop
        deadline = None if timeout is None else loop.time() + timeout
        while not self.q:
            if self.err is not None:
                raise self.err
            if self.paused:
                self.maybe_resume()
            if not await wait(loop, self.waiters, deadline) and not self.q:
                raise Timeout(f"recv: no frame within {timeout} s; nothing was lost")
