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


# ---------------------------------------------------------------- the acceptor
# Listener.accept waits in accept4 itself when it has 20 ms or more to wait
# (the listener made blocking, SO_RCVTIMEO inside the deadline), else in
# poll; csrc/core/accept.h.  Threads may share a listener; close() wakes
# them all and closes the fd only once they are out.


def test_a_long_accept_then_a_short_one_keeps_the_short_deadline() -> None:
    with sk.listen(("127.0.0.1", 0)) as srv:
        threading.Timer(0.05, lambda: sk.connect(srv.address, timeout=STEP).close()).start()
        srv.accept(timeout=3).close()  # SO_RCVTIMEO now most of 3 s
        for timeout in (0.1, 0.03, 0.3):
            t0 = time.monotonic()
            with pytest.raises(sk.Timeout, match="no client connected within"):
                srv.accept(timeout=timeout)
            took = time.monotonic() - t0
            assert timeout - 0.005 <= took < timeout + 0.5, (timeout, took)


def test_threads_sharing_a_listener_each_keep_their_deadline_and_all_clients_are_taken() -> None:
    with sk.listen(("127.0.0.1", 0)) as srv:
        got: list[sk.Connection] = []
        timed_out: list[tuple[float, float]] = []
        lock = threading.Lock()

        def taker(timeout: float | None, count: int) -> None:
            for _ in range(count):
                t0 = time.monotonic()
                try:
                    c = srv.accept(timeout=timeout)
                except sk.Timeout:
                    with lock:
                        timed_out.append((timeout or 0.0, time.monotonic() - t0))
                    continue
                with lock:
                    got.append(c)

        waiters = [threading.Thread(target=taker, args=(None, 3)) for _ in range(2)]
        short = [threading.Thread(target=taker, args=(t, 4)) for t in (0.01, 0.05, 0.2)]
        for t in waiters + short:
            t.start()
        for t in short:
            t.join(timeout=10)
            assert not t.is_alive()
        # the three short takers timed out on time, 12 times, while two
        # threads waited with no deadline
        assert len(timed_out) == 12 and not got
        for timeout, took in timed_out:
            assert timeout - 0.005 <= took < timeout + 0.5, (timeout, took)
        clients = [sk.connect(srv.address, timeout=STEP) for _ in range(6)]
        for t in waiters:
            t.join(timeout=STEP)
            assert not t.is_alive()
        assert len(got) == 6
        for c in got + clients:
            c.close()


def test_close_wakes_every_thread_in_accept_at_once() -> None:
    srv = sk.listen(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def taker(timeout: float | None) -> None:
        try:
            srv.accept(timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors.append(exc)

    threads = [threading.Thread(target=taker, args=(t,)) for t in (None, 30.0, None, 5.0)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.close()
    assert time.monotonic() - t0 < 0.5
    for t in threads:
        t.join(timeout=1)
        assert not t.is_alive()
    assert time.monotonic() - t0 < 1.0
    assert len(errors) == 4
    assert all(isinstance(e, sk.ConnectionClosed) for e in errors), errors
    with pytest.raises(sk.ConnectionClosed):
        srv.accept(timeout=1)


def accept_long_in_a_thread(lst: "sk.Listener[bytes]") -> None:
    """One accept(timeout=10) in a thread other than the main one (no 50 ms
    signal slice there): it leaves the listener blocking with an
    SO_RCVTIMEO of most of 10 s."""
    th = threading.Thread(target=lambda: lst.accept(timeout=10).close())
    th.start()
    time.sleep(0.05)
    sk.connect(lst.address, timeout=STEP).close()
    th.join(timeout=STEP)
    assert not th.is_alive()
    raw = socket.socket(fileno=os.dup(lst.fileno()))
    try:
        assert raw.getblocking() and raw.gettimeout() is None  # O_NONBLOCK clear
        tv = raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
    finally:
        raw.close()
    assert int.from_bytes(tv[:8], "little") >= 5  # seconds


def test_a_server_takes_over_a_listener_that_accept_left_blocking() -> None:
    # Listener.accept leaves the listener blocking with a long SO_RCVTIMEO;
    # the reactor's accept loop (until EAGAIN) must not block on it
    lst = sk.listen(("127.0.0.1", 0))
    accept_long_in_a_thread(lst)
    with sk.Server(lst, lambda m: m.upper()) as server:
        t0 = time.monotonic()
        for i in range(5):
            assert sk.call(server.address, b"hi %d" % i, timeout=2) == b"HI %d" % i
        assert time.monotonic() - t0 < 2


def test_the_on_connection_server_accepts_in_time_after_a_long_accept() -> None:
    lst = sk.listen(("127.0.0.1", 0))
    accept_long_in_a_thread(lst)

    def echo(conn: sk.Connection) -> None:
        conn.send(conn.recv(timeout=STEP))

    with sk.Server(lst, on_connection=echo) as server:
        t0 = time.monotonic()
        for i in range(5):
            assert sk.call(server.address, b"x%d" % i, timeout=2) == b"x%d" % i
        assert time.monotonic() - t0 < 2
        # close() wakes the accept thread, which waits in accept4
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1


def test_an_accepted_connection_waits_forever_without_waking_per_inherited_timeout() -> None:
    # an accepted socket inherits the listener's SO_RCVTIMEO (Linux); a
    # receive with no timeout in another thread sets none and waits whole
    with sk.listen(("127.0.0.1", 0)) as srv:
        cli = sk.connect(srv.address, timeout=STEP)
        conn = srv.accept(timeout=10)
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(conn.recv()))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not got
        cli.send(b"late")
        t.join(timeout=STEP)
        assert got == [b"late"]
        import struct

        raw = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            tv = raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
        finally:
            raw.close()
        assert struct.unpack("ll", tv) == (0, 0)
        conn.close()
        cli.close()
