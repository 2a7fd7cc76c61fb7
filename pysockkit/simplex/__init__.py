"""Asynchronous simplex mode: requests on one link, replies on another.

A *simplex link* carries data one way only.  Here a client talks to a server
over two TCP connections:

* the **request link** carries requests client -> server;
* the **reply link** carries replies server -> client.

Each request is a correlated frame (``sk.Framing(correlation=True)``, see
docs/PROTOCOL.md) whose id the server echoes with the top bit set, so a
reply arriving on the reply link is matched to its request by id, in any
order.  Without heartbeats, the unused direction of each link is shut down:
the client sends FIN on the reply link right after its registration frame,
the server sends FIN on the request link right after its acknowledgement.

The handshake that pairs the two links of one client (a 16-byte random
session token, sent first on the reply link, then on the request link) is
documented frame by frame in docs/PROTOCOL.md, "Simplex links".

Rules kept here:

* a reply is delivered only to the request with its id; ids are never
  reused, so a reply arriving after its request timed out is dropped and
  counted (``stats.late``), never handed to another request;
* replies with an unknown id, second replies, and frames that are not
  replies are dropped and counted;
* memory is bounded on both sides: ``max_pending`` requests in flight per
  client (``request`` waits for a free slot, up to its timeout), and on the
  server ``max_inflight`` unanswered requests per client; a client that does
  not read its replies is dropped after ``send_timeout``;
* when a link drops, every pending request fails at once with a typed error
  naming the link (``sk.ConnectionClosed``, ``sk.ConnectionReset``,
  ``sk.PeerDead``); there is **no automatic reconnect**: the client is done,
  make a new :class:`Client` (a new session).

Example::

    from pysockkit import simplex

    with simplex.Server(("127.0.0.1", 0), ("127.0.0.1", 0), bytes.upper) as srv, \\
         simplex.Client(srv.request_address, srv.reply_address) as cli:
        print(cli.request(b"hello", timeout=2.0))          # b'HELLO'
        futs = [cli.request_async(b"%d" % i, timeout=2.0) for i in range(100)]
        print(sum(len(f.result()) for f in futs))          # 190
"""
from __future__ import annotations

from .._errors import RemoteError
from ._handshake import ERROR, ID_MASK, REPLY, HandshakeError
from .client import Client
from .server import Handler, Server
from .stats import ClientStats, ServerStats

__all__ = [
    "Client",
    "Server",
    "ClientStats",
    "ServerStats",
    "RemoteError",
    "HandshakeError",
    "Handler",
    "REPLY",
    "ERROR",
    "ID_MASK",
]
