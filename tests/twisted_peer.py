"""A Twisted peer for tests/test_interop_twisted.py, run in its own process
(the reactor runs once per process).

    python twisted_peer.py server int32|int16 MAX_SECONDS
        listens on 127.0.0.1 (a free port), prints "port N", answers every
        string with the string reversed; a string over MAX_LENGTH makes it
        print "limit N" and drop the connection (Twisted's default).
    python twisted_peer.py client int32|int16 PORT MAX_SECONDS
        connects, sends payloads(kind) with sendString, reads as many
        replies, prints them as JSON (sizes and sha256), disconnects.

Twisted's Int32StringReceiver and Int16StringReceiver frame each string as
a 4- or 2-byte big-endian length, then the bytes: pysockkit's
Framing() and Framing(header_size=2).  Both refuse strings over
MAX_LENGTH = 99999 by default.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from typing import Any

TWISTED_MAX_LENGTH = 99999  # IntNStringReceiver.MAX_LENGTH, the default


def payloads(kind: str) -> list[bytes]:
    """The strings sent in one run: the edge sizes, then many small ones."""
    rng = random.Random(kind)
    top = TWISTED_MAX_LENGTH if kind == "int32" else 65535
    sizes = [0, 1, top] + [rng.randint(0, 2000) for _ in range(500)]
    return [rng.randbytes(n) for n in sizes]


def digest(items: list[bytes]) -> list[list[Any]]:
    return [[len(p), hashlib.sha256(p).hexdigest()] for p in items]


def main(argv: list[str]) -> None:
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import Int16StringReceiver, Int32StringReceiver

    mode, kind = argv[0], argv[1]
    base = {"int32": Int32StringReceiver, "int16": Int16StringReceiver}[kind]
    assert base.MAX_LENGTH == TWISTED_MAX_LENGTH

    if mode == "server":
        class Reverse(base):  # type: ignore[valid-type, misc]
            def stringReceived(self, s: bytes) -> None:
                self.sendString(s[::-1])

            def lengthLimitExceeded(self, length: int) -> None:
                print("limit", length, flush=True)
                base.lengthLimitExceeded(self, length)  # drops the connection

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Reverse),
                                 interface="127.0.0.1")
        print("port", port.getHost().port, flush=True)
        reactor.callLater(float(argv[2]), reactor.stop)
        reactor.run()
        return

    sent = payloads(kind)
    got: list[bytes] = []

    class Client(base):  # type: ignore[valid-type, misc]
        def connectionMade(self) -> None:
            for p in sent:
                self.sendString(p)

        def stringReceived(self, s: bytes) -> None:
            got.append(s)
            if len(got) == len(sent):
                self.transport.loseConnection()

    class Factory(protocol.ClientFactory):
        protocol = Client

        def clientConnectionLost(self, connector: Any, reason: Any) -> None:
            reactor.stop()

        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            print("failed", reason.getErrorMessage(), flush=True)
            reactor.stop()

    reactor.connectTCP("127.0.0.1", int(argv[2]), Factory())
    reactor.callLater(float(argv[3]), reactor.stop)
    reactor.run()
    print(json.dumps({"received": digest(got)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
