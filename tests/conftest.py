"""Fixtures shared by the synchronous framed-TCP tests.

Every factory fixture records what it opened and closes it at teardown, so
no test leaks a socket (pytest runs with filterwarnings=error: an unclosed
Connection's ResourceWarning would fail the test).
"""

from __future__ import annotations

import signal
import socket
from typing import Any, Callable, Optional

import pytest

import pysockkit as sk
from helpers import STEP_TIMEOUT, RawPeer, set_nodelay

# A run started as a background job (``cmd &``, as scripts and CI do)
# inherits SIGINT ignored, and so would every child interpreter: Ctrl-C
# (SIGINT) would not stop them.  Tests that interrupt a child need the
# default; a handled signal is reset to the default in children at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _Closer:
    """Collects resources and closes them in reverse order."""

    def __init__(self) -> None:
        self._items: list[Any] = []

    def add(self, obj: Any) -> Any:
        self._items.append(obj)
        return obj

    def close_all(self) -> None:
        errors = []
        while self._items:
            obj = self._items.pop()
            try:
                obj.close()
            except Exception as exc:  # keep closing the rest
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def closer():
    """Register anything with a close() method; closed after the test."""
    c = _Closer()
    yield c
    c.close_all()


@pytest.fixture
def listener(closer) -> Callable[..., sk.Listener]:
    """Factory: ``listener(framing=None, backlog=128)`` -> an sk.Listener on
    127.0.0.1 with a free port."""

    def make(framing: Optional[sk.Framing] = None, backlog: int = 128) -> sk.Listener:
        return closer.add(sk.listen(("127.0.0.1", 0), backlog=backlog, framing=framing))

    return make


@pytest.fixture
def conn_pair(closer) -> Callable[..., tuple[sk.Connection, sk.Connection]]:
    """Factory: ``conn_pair(framing=None)`` -> (client, server) Connections,
    both ends pysockkit, connected over loopback."""

    def make(framing: Optional[sk.Framing] = None) -> tuple[sk.Connection, sk.Connection]:
        with sk.listen(("127.0.0.1", 0), framing=framing) as srv:
            cli = closer.add(sk.connect(srv.address, timeout=STEP_TIMEOUT, framing=framing))
            peer = closer.add(srv.accept(timeout=STEP_TIMEOUT))
        return cli, peer

    return make


@pytest.fixture
def raw_to_conn(closer) -> Callable[..., tuple[socket.socket, sk.Connection]]:
    """Factory: ``raw_to_conn(framing=None, nodelay=True, rcvbuf=None)`` ->
    (raw stdlib client socket, server-side Connection).

    ``rcvbuf`` sets SO_RCVBUF on the raw socket before it connects (so the
    window is small from the handshake on)."""

    def make(
        framing: Optional[sk.Framing] = None,
        nodelay: bool = True,
        rcvbuf: Optional[int] = None,
    ) -> tuple[socket.socket, sk.Connection]:
        with sk.listen(("127.0.0.1", 0), framing=framing) as srv:
            raw = closer.add(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            if rcvbuf is not None:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if nodelay:
                set_nodelay(raw)
            raw.settimeout(STEP_TIMEOUT)
            raw.connect(srv.address)
            conn = closer.add(srv.accept(timeout=STEP_TIMEOUT))
        return raw, conn

    return make


@pytest.fixture
def conn_to_raw(closer) -> Callable[..., tuple[sk.Connection, socket.socket]]:
    """Factory: ``conn_to_raw(framing=None, rcvbuf=None)`` -> (client
    Connection, raw stdlib server-side socket).

    ``rcvbuf`` is set on the raw listening socket before listen(), so the
    accepted socket has a small window from the handshake on."""

    def make(
        framing: Optional[sk.Framing] = None, rcvbuf: Optional[int] = None
    ) -> tuple[sk.Connection, socket.socket]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
            if rcvbuf is not None:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            conn = closer.add(sk.connect(ls.getsockname(), timeout=STEP_TIMEOUT, framing=framing))
            ls.settimeout(STEP_TIMEOUT)
            raw, _ = ls.accept()
            closer.add(raw)
        raw.settimeout(STEP_TIMEOUT)
        return conn, raw

    return make


@pytest.fixture
def raw_peer():
    """Wrap a stdlib socket as a RawPeer: ``raw_peer(sock, header_size, byteorder)``."""

    def make(sock: socket.socket, header_size: int = 4, byteorder: str = "big") -> RawPeer:
        return RawPeer(sock, header_size, byteorder)

    return make
