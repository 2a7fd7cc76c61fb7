"""Mistakes mypy --strict must catch: every line marked ``# E: <code>``
is an error with that code, and no other line is (tests/test_typing.py).
Never run, only type-checked."""

from __future__ import annotations

import pysockkit as sk
import pysockkit.aio as aio


def plain_only(conn: sk.Connection[bytes]) -> None:
    conn.send(conn.recv())


def sync(addr: sk.Address) -> None:
    conn = sk.connect(addr, framing=sk.Framing(correlation=True))
    payload: bytes = conn.recv()  # E: assignment
    conn.recv().upper()  # E: union-attr
    plain_only(conn)  # E: arg-type
    plain_only(sk.connect(addr))
    conn.send(payload)


async def aio_side(addr: sk.Address) -> None:
    conn = await aio.connect(addr, framing=sk.Framing(correlation=True))
    data: bytes = await conn.recv()  # E: assignment
    plain = await aio.connect(addr)
    (await plain.recv())[1].upper()  # E: attr-defined
    await conn.send(data)
