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
from ._net import AddressLike, check_timeout
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

    Limits (all off by default): ``read_timeout`` is how long a client may
    take to deliver each whole frame, counted from when the server starts
    waiting for it (so an idle client and a slowloris client that dribbles
    bytes are both dropped); ``write_timeout`` bounds sending each reply (a
    client that never reads is dropped once its window is full for that
    long); ``max_connections`` caps the clients served at once, and a
    client over the cap is reset at once.  A dropped client is aborted
    (RST) and its ``sk.Timeout`` is recorded in ``errors``; ``rejected``
    counts the clients turned away by the cap.

    Example::

        with sk.serve(("127.0.0.1", 0), lambda m: m.upper()) as srv:
            print(sk.call(srv.address, b"hi", timeout=1.0))   # b'HI'
    """

    def __init__(self, listener: Listener, handler: Handler,
                 read_timeout: Optional[float] = None,
                 write_timeout: Optional[float] = None,
                 max_connections: Optional[int] = None) -> None:
        read_timeout = check_timeout(read_timeout, "read_timeout")
        write_timeout = check_timeout(write_timeout, "write_timeout")
        for name, v in (("read_timeout", read_timeout), ("write_timeout", write_timeout)):
            if v == 0:
                raise ValueError(f"{name} must be > 0 seconds or None, not 0")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, not {max_connections!r}")
        self._listener = listener
        self._handler = handler
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_conns = max_connections
        self.rejected = 0
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
                if self._max_conns is not None and len(self._conns) >= self._max_conns:
                    self.rejected += 1
                    conn.abort()  # RST: the client learns at once
                    continue
                self._conns.add(conn)
                t = threading.Thread(target=self._serve_one, args=(conn,), name="pysockkit-conn", daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()

    def _serve_one(self, conn: Connection) -> None:
        give_up = False
        try:
            while True:
                msg = conn.recv(timeout=self._read_timeout)
                reply = self._handler(msg)
                self.served += 1
                if reply is not None:
                    conn.send(reply, timeout=self._write_timeout)
        except ConnectionClosed:
            pass
        except Error as exc:
            give_up = isinstance(exc, Timeout)
            if not self._stop.is_set():
                self.errors.append(exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            if give_up:
                conn.abort()  # a half-sent reply or a dribbling client: RST
            else:
                conn.close()

    def close(self, timeout: Optional[float] = 2.0) -> None:
        """Stop accepting, close every client connection, join the threads.

        Example::

            srv.close()
        """
        timeout = check_timeout(timeout)
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
    addr: AddressLike = ("127.0.0.1", 0),
    handler: Optional[Handler] = None,
    framing: Optional[Framing] = None,
    backlog: int = 128,
    *,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    max_connections: Optional[int] = None,
) -> Server:
    """Start a threaded framed server on ``addr`` that answers each frame
    with ``handler(frame)`` (echo by default) and return it at once.

    ``read_timeout``, ``write_timeout`` and ``max_connections`` protect it
    from clients that dribble, never read, or come in floods (see
    :class:`Server`); all are off by default.

    Example::

        >>> srv = sk.serve(handler=lambda m: b"pong" if m == b"ping" else m)
        >>> sk.call(srv.address, b"ping", timeout=1.0)
        b'pong'
        >>> srv.close()
        >>> guarded = sk.serve(read_timeout=30.0, write_timeout=10.0, max_connections=1000)
        >>> guarded.close()
    """
    lst = listen(addr, backlog=backlog, framing=framing)
    try:
        return Server(lst, handler or _echo, read_timeout, write_timeout, max_connections)
    except BaseException:  # a bad argument: do not leave the listener open
        lst.close()
        raise
