"""The asyncio protocol of an aio connection: the adapter between the
event loop's callbacks and the connection's parts."""

from __future__ import annotations

import asyncio
import typing
from typing import Optional, cast

from ._receiver import Receiver
from ._writer import Writer


class Events(typing.Protocol):
    """What the protocol shim calls back: the aio connection."""

    def _made(self, transport: asyncio.Transport) -> None: ...
    def _on_data(self, n: int) -> None: ...
    def _on_eof(self) -> bool: ...
    def _on_lost(self, exc: Optional[BaseException]) -> None: ...


class StreamProtocol(asyncio.BufferedProtocol):
    """The asyncio protocol of an aio connection: a thin shim, so that the
    connection's public namespace holds no protocol callbacks.  Writing
    flow control goes straight to the connection's writer, the receive
    buffer comes from its receiver."""

    __slots__ = ("_c", "_rx", "_w")

    def __init__(self, conn: Events, rx: Receiver, w: Writer) -> None:
        self._c = conn
        self._rx = rx
        self._w = w

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self._c._made(cast(asyncio.Transport, transport))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rx.mv

    def buffer_updated(self, nbytes: int) -> None:
        self._c._on_data(nbytes)

    def eof_received(self) -> bool:
        return self._c._on_eof()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._c._on_lost(exc)

    def pause_writing(self) -> None:
        self._w.paused = True

    def resume_writing(self) -> None:
        self._w.resume()
