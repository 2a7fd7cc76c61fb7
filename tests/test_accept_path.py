"""What Listener.accept, connect and call build, over real loopback sockets.

A connection without heartbeat or keepalive is made in one C call,
``Connection._adopt(fd, framing)``, instead of ``Connection(fd, framing)``
and its Python ``__init__`` (the accept and connect paths of a short
connection; bench/README.md, short-conn).  These tests hold the two to the
same result: the same framing on the wire, the same attributes, the same
errors.  sk.call makes no Connection at all: ``_core.exchange(fd, data,
timeout, framing)`` sends, receives and closes on a C connection of its
own, and must behave as ``request`` then ``close`` did.  Accepted sockets
get TCP_NODELAY from their listener (set once by sk.listen; Linux copies
it into each accepted socket), not from a setsockopt per accept.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from typing import Callable

import pytest

import pysockkit as sk
from pysockkit import _core
from pysockkit._conn import Connection
from pysockkit._workers import _listener as reuseport_listener
from helpers import STEP_TIMEOUT as STEP, recv_all

FRAMINGS = [
    sk.Framing(),
    sk.Framing(header_size=2),
    sk.Framing(header_size=8, byteorder="little"),
    sk.Framing(max_frame=100),
    sk.Framing(correlation=True),
]


def nodelay(conn: "sk.Connection") -> int:
    """TCP_NODELAY of the connection's socket, read through a dup."""
    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        s.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accepted_and_connected_sockets_have_nodelay(host: str) -> None:
    with sk.listen((host, 0)) as lst:
        with sk.connect(lst.address, timeout=STEP) as cli, lst.accept(timeout=STEP) as srv:
            assert nodelay(cli) != 0
            assert nodelay(srv) != 0
            # and it matters: a small frame right behind another unacknowledged one
            # leaves at once (Nagle would hold it for the ACK of the first)
            cli.send(b"a")
            cli.send(b"b")
            assert srv.recv(timeout=STEP) == b"a" and srv.recv(timeout=STEP) == b"b"


def test_the_processes_listener_gives_nodelay_too() -> None:
    """sk.serve(processes=N)'s SO_REUSEPORT listener sets it as sk.listen does."""
    lst = reuseport_listener(socket.AF_INET, "127.0.0.1", 0, 16, sk.Framing(), None)
    try:
        with sk.connect(lst.address, timeout=STEP) as cli, lst.accept(timeout=STEP) as srv:
            assert nodelay(srv) != 0
            cli.send(b"x")
            assert srv.recv(timeout=STEP) == b"x"
    finally:
        lst.close()


def test_the_on_connection_server_gets_nodelay() -> None:
    seen: list[int] = []

    def on_connection(conn: "sk.Connection") -> None:
        seen.append(nodelay(conn))
        conn.send(conn.recv(timeout=STEP))

    with sk.serve(("127.0.0.1", 0), on_connection=on_connection) as srv:
        assert sk.call(srv.address, b"ping", timeout=STEP) == b"ping"
    assert seen and seen[0] != 0


def raw_bytes_of(conn_factory: str, framing: "sk.Framing", payload: bytes) -> bytes:
    """The bytes a connection built by `conn_factory` ("adopt" or "init")
    with `framing` puts on the wire for one frame, read by a raw socket."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    try:
        c = socket.create_connection(ls.getsockname(), timeout=STEP)
        peer, _ = ls.accept()
        fd = c.detach()
        conn = Connection._adopt(fd, framing) if conn_factory == "adopt" else Connection(fd, framing)
        try:
            if framing.correlation:
                conn.send(payload, id=7)
            else:
                conn.send(payload)
            conn.close()
            return recv_all(peer)
        finally:
            conn.close()
            peer.close()
    finally:
        ls.close()


@pytest.mark.parametrize("framing", FRAMINGS, ids=repr)
def test_adopt_puts_the_same_bytes_on_the_wire_as_init(framing: "sk.Framing") -> None:
    adopted = raw_bytes_of("adopt", framing, b"hello")
    assert adopted == raw_bytes_of("init", framing, b"hello")
    assert adopted.endswith(b"hello") and len(adopted) > 5


@pytest.mark.parametrize("framing", FRAMINGS, ids=repr)
def test_accept_and_connect_keep_the_framing(framing: "sk.Framing") -> None:
    with sk.listen(("127.0.0.1", 0), framing=framing) as lst:
        with sk.connect(lst.address, timeout=STEP, framing=framing) as cli, \
                lst.accept(timeout=STEP) as srv:
            for conn in (cli, srv):
                assert type(conn) is Connection
                assert conn.framing is framing
                assert conn.heartbeat is None
                assert conn._duplex is None  # a slot __init__ sets, read by duplex()
            if framing.correlation:
                cli.send(b"q", id=5)
                assert srv.recv(timeout=STEP) == (5, b"q")
            else:
                cli.send(b"q")
                assert srv.recv(timeout=STEP) == b"q"
            # the limit is the framing's: one byte over it is refused before sending
            with pytest.raises(sk.FrameTooLarge):
                srv.send(b"x" * (framing.max_frame + 1))
            srv.send(b"still usable")
            got = cli.recv(timeout=STEP)
            assert got == b"still usable"


def test_call_uses_the_framing_it_is_given() -> None:
    framing = sk.Framing(header_size=2)

    def serve_one() -> None:
        with lst.accept(timeout=STEP) as c:
            c.send(c.recv(timeout=STEP)[::-1])

    with sk.listen(("127.0.0.1", 0), framing=framing) as lst:
        t = threading.Thread(target=serve_one)
        t.start()
        try:
            assert sk.call(lst.address, b"abc", timeout=STEP, framing=framing) == b"cba"
        finally:
            t.join(STEP)
    assert not t.is_alive()


def test_adopt_refuses_bad_input_and_closes_the_fd() -> None:
    with pytest.raises(TypeError):
        Connection._adopt("3", sk.Framing())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Connection._adopt(-1, sk.Framing())
    with pytest.raises(TypeError):
        Connection._adopt(3)  # type: ignore[call-arg]
    a, b = socket.socketpair()
    try:
        fd = a.detach()
        with pytest.raises(AttributeError):
            Connection._adopt(fd, object())
        with pytest.raises(OSError):  # closed by _adopt: not leaked
            os.fstat(fd)
    finally:
        b.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def one_shot_server(framing: "sk.Framing", answer: "Callable[[sk.Connection], None]"):
    """A listener and a thread that accepts one client and runs answer."""
    lst = sk.listen(("127.0.0.1", 0), framing=framing)

    def serve() -> None:
        with lst.accept(timeout=STEP) as c:
            answer(c)

    t = threading.Thread(target=serve)
    t.start()
    return lst, t


@pytest.mark.parametrize("framing", FRAMINGS, ids=repr)
def test_call_answers_as_request_did(framing: "sk.Framing") -> None:
    """The reply as Connection.recv gives it: bytes, or (id, payload) for a
    correlated reply frame on a correlation framing."""
    def answer(c: "sk.Connection") -> None:
        got = c.recv(timeout=STEP)
        if framing.correlation:
            assert got == b"ask"  # call sends a plain frame
            c.send(b"plain")
            return
        c.send(bytes(got)[::-1])

    lst, t = one_shot_server(framing, answer)
    try:
        want = b"plain" if framing.correlation else b"ksa"
        assert sk.call(lst.address, memoryview(b"ask"), timeout=STEP, framing=framing) == want
    finally:
        t.join(STEP)
        lst.close()


def test_call_with_a_correlated_reply_returns_the_pair() -> None:
    framing = sk.Framing(correlation=True)
    lst, t = one_shot_server(framing, lambda c: (c.recv(timeout=STEP), c.send(b"r", id=9)))
    try:
        assert sk.call(lst.address, b"q", timeout=STEP, framing=framing) == (9, b"r")
    finally:
        t.join(STEP)
        lst.close()


def test_call_failures_leak_no_fd_and_name_call() -> None:
    framing = sk.Framing(max_frame=100)
    base = open_fds()
    # too large: refused before a byte is sent, the connection closed
    lst, t = one_shot_server(framing, lambda c: pytest.raises(sk.ConnectionClosed, c.recv,
                                                                timeout=STEP))
    try:
        with pytest.raises(sk.FrameTooLarge):
            sk.call(lst.address, b"x" * 101, timeout=STEP, framing=framing)
    finally:
        t.join(STEP)
        lst.close()
    assert not t.is_alive()
    # no reply in time: Timeout naming call and what became of the request
    holder: list[bytes] = []
    lst, t = one_shot_server(framing, lambda c: (holder.append(c.recv(timeout=STEP)),
                                                 time.sleep(0.3)))
    try:
        with pytest.raises(sk.Timeout, match=r"^call: timed out .*the request was sent"):
            sk.call(lst.address, b"hello", timeout=0.1, framing=framing)
    finally:
        t.join(STEP)
        lst.close()
    assert holder == [b"hello"]
    # not a buffer: TypeError, with the socket closed
    lst, t = one_shot_server(framing, lambda c: pytest.raises(sk.ConnectionClosed, c.recv,
                                                                timeout=STEP))
    try:
        with pytest.raises(TypeError):
            sk.call(lst.address, "text", timeout=STEP, framing=framing)  # type: ignore[arg-type]
    finally:
        t.join(STEP)
        lst.close()
    assert open_fds() == base


def test_exchange_closes_its_fd_on_bad_arguments() -> None:
    for bad in ((b"x", None, object()), ("text", None, sk.Framing()), (b"x", -1.0, sk.Framing())):
        a, b = socket.socketpair()
        fd = a.detach()
        try:
            with pytest.raises((AttributeError, TypeError, ValueError)):
                _core.exchange(fd, *bad)
            with pytest.raises(OSError):  # closed by exchange: not leaked
                os.fstat(fd)
        finally:
            b.close()
    with pytest.raises(ValueError):
        _core.exchange(-1, b"x", None, sk.Framing())


def test_call_with_several_addresses_tries_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to several addresses: the first that accepts
    gets the exchange (connect, then _core.exchange); a refused one is
    skipped.  The resolution is replaced, the sockets are real."""
    import pysockkit._conn as conn_mod

    with socket.socket() as held:  # bound, not listening: refuses
        held.bind(("127.0.0.1", 0))
        refused = held.getsockname()[1]
        lst, t = one_shot_server(sk.Framing(), lambda c: c.send(c.recv(timeout=STEP) + b"!"))
        try:
            good = lst.address[1]
            monkeypatch.setattr(conn_mod, "resolve", lambda addr: [
                (socket.AF_INET, "127.0.0.1", refused), (socket.AF_INET, "127.0.0.1", good)])
            base = open_fds()
            assert sk.call("several.example:1", b"hi", timeout=STEP) == b"hi!"
            assert open_fds() == base
        finally:
            t.join(STEP)
            lst.close()


def test_call_on_one_address_reports_connect_errors_as_connect_does() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        addr = held.getsockname()
        with pytest.raises(sk.Error, match="nothing listens on 127.0.0.1:") as ei:
            sk.call(addr, b"x", timeout=STEP)
        assert ei.value.errno == errno.ECONNREFUSED
        with pytest.raises(sk.Error, match="nothing listens on 127.0.0.1:"):
            sk.connect(addr, timeout=STEP)
