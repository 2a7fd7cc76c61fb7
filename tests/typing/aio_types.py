"""Typed use of pysockkit.aio: mypy --strict accepts this file, and each
``reveal_type`` shows the type after ``# R:`` (tests/test_typing.py).
Never run, only type-checked."""

from __future__ import annotations

import asyncio

import pysockkit as sk
import pysockkit.aio as aio


async def echo(conn: aio.Connection[bytes]) -> None:
    async for msg in conn:
        reveal_type(msg)  # R: bytes
        await conn.send(msg)


async def plain(addr: sk.Address) -> list[bytes]:
    async with await aio.serve(("127.0.0.1", 0), on_connection=echo) as server:
        conn = await aio.connect(server.address, timeout=5.0)
        reveal_type(conn)  # R: pysockkit.aio.connection.Connection[bytes]
        first: bytes = await conn.recv(timeout=1.0)
        more: list[bytes] = await conn.recv_many(timeout=1.0)
        maybe = conn.recv_nowait()
        reveal_type(maybe)  # R: bytes | None
        replies = await asyncio.gather(*(conn.request(b"%d" % i, timeout=2.0) for i in range(9)))
        return [first, *more, *replies]


async def correlated_server(conn: aio.Connection[aio.Message]) -> None:
    async for msg in conn:
        if isinstance(msg, tuple):
            await conn.reply(msg[0], msg[1][::-1])
        else:
            await conn.send(msg)


async def correlated(addr: sk.Address) -> bytes:
    framing = sk.Framing(correlation=True)
    async with await aio.listen(addr, framing=framing) as lst:
        reveal_type(lst)  # R: pysockkit.aio.listener.Listener[bytes | tuple[int, bytes]]
        conn = await aio.connect(lst.address, framing=framing)
        msg = await conn.recv()
        reveal_type(msg)  # R: bytes | tuple[int, bytes]
        return await conn.request(b"x", timeout=1.0)
