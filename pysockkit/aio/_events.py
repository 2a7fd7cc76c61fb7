"""``async for`` over an :class:`EventLog` (the lifecycle events of
``aio.connect(..., reconnect=)`` and of ``aio.serve``), apart from
pysockkit/_reconnect.py so that a plain ``import pysockkit`` loads no
asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Optional

from .._reconnect import ConnectionEvent, EventLog

__all__ = ["aiter_events"]


async def aiter_events(log_: EventLog, wait: bool,
                       timeout: Optional[float]) -> AsyncIterator[ConnectionEvent]:
    """The asyncio form of :meth:`EventLog.reader`: the events of
    ``log_`` from the oldest kept; with ``wait`` it waits (in the running
    loop) for more and ends when the log ended (or after ``timeout``
    seconds without an event)."""
    reader = log_.reader(wait=False)
    flag = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wake() -> None:  # any thread
        if loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(flag.set)
        except RuntimeError:  # the loop closed meanwhile
            pass

    log_.add_waker(wake)
    try:
        while True:
            flag.clear()
            for ev in reader:
                yield ev
            if reader.ended or not wait:
                return
            try:
                await asyncio.wait_for(flag.wait(), timeout)
            except asyncio.TimeoutError:
                return
    finally:
        log_.remove_waker(wake)
