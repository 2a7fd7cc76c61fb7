"""A small threaded framed server: one accept thread, one thread a client.

For tests, tools and the tour; a server holding thousands of connections
wants the reactor (pysockkit.aio) instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

from ._conn import Address, Connection, Listener, listen
from ._errors import ConnectionClosed, Error, Timeout
from ._types import Framing

__all__ = ["Server", "serve"]

Handler = Callable[[bytes], Optional[bytes]]

_POLL = 0.1  # how often the accept loop looks at the stop flag, in seconds


def _echo(msg: bytes) -> bytes:
    return msg


class Server:
    """A framed server running ``handler`` in background threads.

    ``handler(message) -> reply`` is called for every frame a client sends;
    a reply that is not None is sent back as one frame.  A client that
    misbehaves (oversized header, truncated frame, reset) loses its own
    connection; the others are served on.  ``errors`` lists what happened
    to such clients.

    Example::

        with sk.serve(("127.0.0.1", 0), lambda m: m.upper()) as srv:
            print(sk.call(srv.address, b"hi", timeout=1.0))   # b'HI'
    """

    def __init__(self, listener: Listener, handler: Handler) -> None:
        self._listener = listener
        self._handler = handler
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.served = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="pysockkit-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> Address:
        """(host, port) the server listens on."""
        return self._listener.address

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._listener.accept(timeout=_POLL)
            except Timeout:
                continue
            except Error as exc:
                if self._stop.is_set():
                    return
                self.errors.append(exc)
                continue
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self._conns.add(conn)
                t = threading.Thread(target=self._serve_one, args=(conn,), name="pysockkit-conn", daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _serve_one(self, conn: Connection) -> None:
        try:
            while True:
                msg = conn.recv()
                reply = self._handler(msg)
                self.served += 1
                if reply is not None:
                    conn.send(reply)
        except ConnectionClosed:
            pass
        except Error as exc:
            if not self._stop.is_set():
                self.errors.append(exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every client connection, join the threads.

        Example::

            srv.close()
        """
        self._stop.set()
        self._acceptor.join(timeout)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            c.close()
        for t in threads:
            t.join(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(
    addr: Address = ("127.0.0.1", 0),
    handler: Optional[Handler] = None,
    framing: Optional[Framing] = None,
    backlog: int = 128,
) -> Server:
    """Start a threaded framed server on ``addr`` that answers each frame
    with ``handler(frame)`` (echo by default) and return it at once.

    Example::

        >>> srv = sk.serve(handler=lambda m: b"pong" if m == b"ping" else m)
        >>> sk.call(srv.address, b"ping", timeout=1.0)
        b'pong'
        >>> srv.close()
    """
    return Server(listen(addr, backlog=backlog, framing=framing), handler or _echo)
