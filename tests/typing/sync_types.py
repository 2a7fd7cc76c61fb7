"""Typed use of the synchronous API: mypy --strict accepts this file, and
each ``reveal_type`` shows the type after ``# R:`` (tests/test_typing.py).
Never run, only type-checked."""

from __future__ import annotations

import concurrent.futures

import pysockkit as sk


def plain(addr: sk.Address) -> bytes:
    """Plain framing: recv returns bytes."""
    with sk.connect(addr, timeout=1.0) as conn:
        reveal_type(conn)  # R: pysockkit._conn.Connection[bytes]
        first: bytes = conn.recv(timeout=1.0)
        batch: list[bytes] = conn.recv_many(timeout=1.0)
        reply: bytes = conn.request(b"ping", timeout=1.0)
        rest = b"".join(msg for msg in conn)
        return first + b"".join(batch) + reply + rest


def plain_server(addr: sk.Address) -> None:
    with sk.listen(addr, framing=sk.Framing(header_size=2)) as lst:
        reveal_type(lst)  # R: pysockkit._conn.Listener[bytes]
        with lst.accept(timeout=1.0) as conn:
            conn.send(conn.recv().upper())


def correlated(addr: sk.Address) -> None:
    """Framing(correlation=True): recv returns bytes or (id, payload)."""
    framing = sk.Framing(correlation=True)
    reveal_type(framing)  # R: pysockkit._types.Framing[bytes | tuple[int, bytes]]
    with sk.connect(addr, framing=framing) as conn:
        msg = conn.recv(timeout=1.0)
        reveal_type(msg)  # R: bytes | tuple[int, bytes]
        if isinstance(msg, tuple):
            request_id, payload = msg
            conn.send(payload.upper(), id=request_id | 1 << 63)
        else:
            conn.send(msg)
        fut: concurrent.futures.Future[bytes] = conn.request_async(b"job", timeout=1.0)
        answer: bytes = fut.result()
        conn.send(answer)


def any_connection(conn: sk.Connection) -> None:
    """A bare annotation accepts every connection; recv is then Any."""
    conn.send(conn.recv())


def callers(addr: sk.Address) -> None:
    any_connection(sk.connect(addr))
    any_connection(sk.connect(addr, framing=sk.Framing(correlation=True)))
    flag = bool(addr)
    reveal_type(sk.Framing(correlation=flag))  # R: pysockkit._types.Framing[bytes | tuple[int, bytes]]


def reconnecting(addr: sk.Address) -> None:
    """reconnect= gives a ReconnectingConnection of the framing's type."""
    with sk.connect(addr, timeout=1.0, reconnect=sk.Reconnect(initial=0.1)) as conn:
        reveal_type(conn)  # R: pysockkit._redial.ReconnectingConnection[bytes]
        reply: bytes = conn.request(b"ping", timeout=1.0)
        first: bytes = conn.recv(timeout=1.0)
        n: int = conn.reconnects
        for ev in conn.events(wait=False):
            kind: str = ev.kind
    fr = sk.Framing(correlation=True)
    with sk.connect(addr, framing=fr, reconnect=sk.Reconnect(), on_event=print) as cconn:
        msg = cconn.recv(timeout=1.0)
        reveal_type(msg)  # R: bytes | tuple[int, bytes]
    del reply, first, n, kind
