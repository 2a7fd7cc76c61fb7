"""asyncio echo: a pysockkit.aio server and client in one process.

    python examples/aio_echo.py

The server answers plain frames with the same frame and correlated requests
with the payload upper-cased; the client sends a frame, then 100 concurrent
requests on the same connection.
"""

import asyncio

import pysockkit as sk
import pysockkit.aio as aio

FRAMING = sk.Framing(correlation=True)  # both peers: requests carry ids


async def handler(conn: aio.Connection) -> None:
    async for msg in conn:  # ends when the client closes
        if isinstance(msg, tuple):  # (id, payload): a request
            request_id, payload = msg
            await conn.reply(request_id, payload.upper())
        else:
            await conn.send(msg)


async def main() -> None:
    async with await aio.serve(("127.0.0.1", 0), handler, framing=FRAMING) as server:
        print("server listening on", server.address)
        async with await aio.connect(server.address, framing=FRAMING, timeout=5.0) as conn:
            await conn.send(b"hello")
            print("echo:", await conn.recv(timeout=1.0))
            replies = await asyncio.gather(
                *(conn.request(b"request %d" % i, timeout=2.0) for i in range(100)))
            print("requests:", len(replies), "replies, first", replies[0], "last", replies[-1])
            print("stats:", conn.stats)


if __name__ == "__main__":
    asyncio.run(main())
