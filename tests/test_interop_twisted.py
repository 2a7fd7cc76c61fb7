"""Interoperability with Twisted's length-prefixed protocols, both ways.

docs/PROTOCOL.md pairs ``Int32StringReceiver`` with ``sk.Framing()`` and
``Int16StringReceiver`` with ``sk.Framing(header_size=2)``.  The Twisted
side runs its reactor in a child process (tests/twisted_peer.py); Twisted
is installed by the test command (pyproject's [test] extra).  Each run
sends the edge sizes (0, 1 and the largest the pair allows) and 500 small
strings, and checks every byte, in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import pysockkit as sk
import twisted_peer
from helpers import STEP_TIMEOUT, Spawned, child_env, scaled

PEER = str(Path(__file__).with_name("twisted_peer.py"))
FRAMING = {"int32": sk.Framing(), "int16": sk.Framing(header_size=2)}
KINDS = ["int32", "int16"]


class TwistedServer(Spawned):
    def __init__(self, kind: str) -> None:
        super().__init__([sys.executable, PEER, "server", kind, str(scaled(60))],
                         env=child_env())

    def line(self) -> str:
        line = self.readline(scaled(30))
        assert line, f"no line from the Twisted peer: {self.finish()}"
        return line


@pytest.fixture
def twisted_server():
    started: list[TwistedServer] = []

    def make(kind: str) -> tuple[TwistedServer, tuple[str, int]]:
        s = TwistedServer(kind)
        started.append(s)
        word, port = s.line().split()
        assert word == "port"
        return s, ("127.0.0.1", int(port))

    yield make
    for s in started:
        s.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_sk_client_to_twisted_server(twisted_server, kind: str) -> None:
    _, addr = twisted_server(kind)
    sent = twisted_peer.payloads(kind)
    with sk.connect(addr, timeout=STEP_TIMEOUT, framing=FRAMING[kind]) as conn:
        # one at a time (request), then all at once (send_many, coalesced)
        for p in sent[:20]:
            assert conn.request(p, timeout=STEP_TIMEOUT) == p[::-1]
        assert conn.send_many(sent, timeout=STEP_TIMEOUT) == len(sent)
        got: list[bytes] = []
        while len(got) < len(sent):
            got += conn.recv_many(timeout=STEP_TIMEOUT)
        assert len(got) == len(sent)
        assert got == [p[::-1] for p in sent]


@pytest.mark.parametrize("kind", KINDS)
def test_twisted_client_to_sk_server(kind: str) -> None:
    with sk.serve(("127.0.0.1", 0), lambda m: m[::-1], framing=FRAMING[kind]) as srv:
        r = subprocess.run(
            [sys.executable, PEER, "client", kind, str(srv.address[1]), str(scaled(60))],
            capture_output=True, text=True, timeout=scaled(90), env=child_env())
        assert r.returncode == 0, r.stderr[-3000:]
        got = json.loads(r.stdout.strip().splitlines()[-1])["received"]
        expected = twisted_peer.digest([p[::-1] for p in twisted_peer.payloads(kind)])
        assert got == expected
        assert srv.errors == []


def test_twisted_drops_strings_over_its_max_length(twisted_server) -> None:
    """The limit of the pairing: Int32StringReceiver refuses a string over
    MAX_LENGTH (99999 by default) and drops the connection, though
    Framing()'s max_frame allows 16 MiB; Framing(max_frame=99999) makes
    pysockkit refuse such a frame itself, before sending anything."""
    server, addr = twisted_server("int32")
    limit = twisted_peer.TWISTED_MAX_LENGTH
    with sk.connect(addr, timeout=STEP_TIMEOUT) as conn:
        assert conn.request(b"x" * limit, timeout=STEP_TIMEOUT) == b"x" * limit
        conn.send(b"y" * (limit + 1), timeout=STEP_TIMEOUT)
        assert server.line() == f"limit {limit + 1}"
        with pytest.raises(sk.ConnectionClosed):
            conn.recv(timeout=STEP_TIMEOUT)
    matched = sk.Framing(max_frame=limit)
    with sk.connect(addr, timeout=STEP_TIMEOUT, framing=matched) as conn:
        with pytest.raises(sk.FrameTooLarge):
            conn.send(b"y" * (limit + 1), timeout=STEP_TIMEOUT)
        assert conn.request(b"still fine", timeout=STEP_TIMEOUT) == b"enif llits"
