"""asyncio API: framed TCP connections driven by an asyncio event loop.

The C codec does the framing: every read lands in a preallocated buffer
(``asyncio.BufferedProtocol``), one ``Decoder.feed`` call turns it into the
list of complete frames, and the list is appended to the connection's
receive queue in one step.  ``recv`` only pops that queue; a receiver that
has to wait parks a future that is resolved once per read (not per frame),
and a cancelled or timed-out wait never takes a frame out of the queue, so
cancelling a ``recv`` loses no byte.

Writes are corked for one loop iteration: frames queued by any task during
an iteration go out in one ``transport.write`` when it ends, so pipelined
requests and replies cost one syscall per batch, not per message.  A big
batch does not wait for the end: its first 4 KiB are written at once, then
every time twice as much is corked (up to 64 KiB), so the peer starts on
the first requests while the rest are queued and both processes work at
the same time instead of taking turns.  A read that wakes tasks schedules
the flush behind them: the replies they queue leave in the same iteration.
The transport's write buffer has an explicit high-water mark
(``send_limit``); ``await send()``/``drain()`` wait while it is above it, so
a peer that stops reading blocks its senders and memory stays bounded.  The
receive queue is bounded too (``recv_limit``): above it the transport stops
reading and TCP's window pushes back on the peer.

``request()`` pipelines: many requests may be in flight on one connection.
Correlated requests (``Framing(correlation=True)`` on both peers) carry an
8-byte id (docs/PROTOCOL.md); ``request()`` allocates one, and the reply
with the same id (top bit set) resolves it, in any order.  A reply whose id
is unknown, already answered or timed out is dropped and counted in
``conn.stats``, never handed to anyone else.  On plain framing replies
carry no id and come in order: the n-th frame that arrives while replies
are owed answers the n-th request, and the reply owed to a request that
timed out is dropped when it comes (the late-reply rule of the synchronous
``request``).  The ids, deadlines and the verdict on every reply come from
the C core's correlation book (``_core.CorrelationBook``, the threaded
duplex's table).

Heartbeats (``sk.Heartbeat``) run on the event loop with the rules of
docs/heartbeat.md and are wire-compatible with the synchronous API's C
reactor; a loop blocked for longer than the peer's timeout makes the peer
declare us dead (the synchronous API's beats come from a C thread instead).

Example::

    import asyncio
    import pysockkit.aio as aio

    async def main():
        async def upper(payload: bytes) -> bytes:   # the message handler
            return payload.upper()

        async with await aio.serve(("127.0.0.1", 0), upper) as srv:
            async with await aio.connect(srv.address) as conn:
                await conn.send(b"hello")
                print(await conn.recv(timeout=1.0))     # b'HELLO'

    asyncio.run(main())
"""

from __future__ import annotations

from .._types import Message as Message
from .connection import Connection, connect
from .reconnecting import ReconnectingConnection
from .listener import Listener, listen
from .server import ConnectionHandler, Handler, Server, serve

__all__ = [
    "Connection",
    "ReconnectingConnection",
    "Listener",
    "Server",
    "Message",
    "Handler",
    "ConnectionHandler",
    "connect",
    "listen",
    "serve",
]
