"""asyncio echo: a pysockkit.aio server and client in one process.

    python examples/aio_echo.py

The server's message handler is called with each frame's payload and its
return value is the reply: a plain frame is answered with a plain frame,
a correlated request with a reply carrying the request's id.  The client
sends a frame, then 100 concurrent requests on the same connection.
"""

import asyncio

import pysockkit as sk
import pysockkit.aio as aio

FRAMING = sk.Framing(correlation=True)  # both peers: requests carry ids


async def upper(payload: bytes) -> bytes:
    """The message handler (plain or async def): payload in, reply out."""
    return payload.upper()


async def main() -> None:
    async with await aio.serve(("127.0.0.1", 0), upper, framing=FRAMING) as server:
        print("server listening on", server.address)
        async with await aio.connect(server.address, framing=FRAMING, timeout=5.0) as conn:
            await conn.send(b"hello")
            print("echo:", await conn.recv(timeout=1.0))
            replies = await asyncio.gather(
                *(conn.request(b"request %d" % i, timeout=2.0) for i in range(100)))
            print("requests:", len(replies), "replies, first", replies[0], "last", replies[-1])
            print("stats:", conn.stats)
    print("server:", server.served, "messages answered")


if __name__ == "__main__":
    asyncio.run(main())
