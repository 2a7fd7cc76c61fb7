"""One client of a simplex server: its two links and the replies waiting
to be written (shared by the server's threads and its handler runner)."""

from __future__ import annotations

import threading
from typing import Optional, Union

from .._conn import Connection

_Buffer = Union[bytes, bytearray, memoryview]


class _Session:
    """One client: its two links and the replies waiting to be written.

    ``cond`` guards ``out``, ``inflight``, ``inflight_bytes``, ``eof`` and
    ``dead``; the reader, the writer and the workers wait/notify on it."""

    __slots__ = ("token", "peer", "reply", "request", "cond", "out", "inflight",
                 "inflight_bytes", "eof", "dead", "attached")

    def __init__(self, token: bytes, peer: str, reply: Connection) -> None:
        self.token = token
        self.peer = peer
        self.reply = reply
        self.request: Optional[Connection] = None
        self.cond = threading.Condition()
        self.out: list[tuple[int, _Buffer]] = []
        self.inflight = 0  # requests read, reply not yet written
        self.inflight_bytes = 0  # their request or reply bytes
        self.eof = False  # the client closed the request link (orderly)
        self.dead = False  # dropped or server closing
        self.attached = threading.Event()
