"""One address validator, one printer, one timeout validator (issue 11,
items 2 and 3), at every public entry point, over real loopback sockets.

Accepted addresses: ``(host, port)``, the stdlib's IPv6
``(host, port, flowinfo, 0)``, ``"host:port"`` and ``"[v6]:port"``;
anything else is a TypeError or ValueError naming the argument and the
accepted forms, never a misparse.  Every address shown is ``host:port`` or
``[v6]:port``.  Timeouts: negative or NaN is a ValueError, a non-number a
TypeError, 0 does not wait, None (or inf) waits forever.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Optional, TypeVar

import pytest

import pysockkit as sk
from pysockkit import aio, simplex
from pysockkit._net import check_timeout, format_address, parse_address, resolve
from pysockkit.testing import assert_frames, assert_state
from helpers import STEP_TIMEOUT, scaled

T = TypeVar("T")
FORMS = "'host:port'"  # every address error names the accepted forms


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, scaled(30.0))

    return asyncio.run(main())


def _free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound and released at once)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------ the validator

GOOD = [
    (("127.0.0.1", 9000), ("127.0.0.1", 9000)),
    (["127.0.0.1", 9000], ("127.0.0.1", 9000)),
    (("::1", 9000), ("::1", 9000)),
    (("[::1]", 9000), ("::1", 9000)),
    (("::1", 9000, 0, 0), ("::1", 9000)),
    (("", 0), ("", 0)),
    (("localhost", 65535), ("localhost", 65535)),
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("  127.0.0.1:9000 ", ("127.0.0.1", 9000)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:9000", ("::1", 9000)),
    ("[2001:db8::7]:80", ("2001:db8::7", 80)),
    ("[::ffff:127.0.0.1]:80", ("::ffff:127.0.0.1", 80)),
]


@pytest.mark.parametrize("value, want", GOOD)
def test_accepted_forms(value: Any, want: tuple[str, int]) -> None:
    assert parse_address(value) == want


BAD = [
    (None, TypeError, "not NoneType"),
    (9000, TypeError, "not int"),
    (b"127.0.0.1:80", TypeError, "not bytes"),
    (("127.0.0.1",), ValueError, "1 item"),
    (("127.0.0.1", 80, 0), ValueError, "3 item"),
    ((1, 80), TypeError, "host must be a str"),
    (("127.0.0.1", "80"), TypeError, "port must be an int"),
    (("127.0.0.1", True), TypeError, "not bool"),
    (("127.0.0.1", 80.0), TypeError, "not float"),
    (("127.0.0.1", 70000), ValueError, "out of range"),
    (("127.0.0.1", -1), ValueError, "out of range"),
    (("fe80::1", 80, 0, 2), ValueError, "scope"),
    (("fe80::1%lo", 80), ValueError, "scope"),
    (("127.0.0.1", 80, "0", 0), TypeError, "flowinfo"),
    ("127.0.0.1", ValueError, "has no port"),
    ("9000", ValueError, "only a port"),
    (":9000", ValueError, "has no host"),
    ("127.0.0.1:", ValueError, "is not a number"),
    ("localhost:abc", ValueError, "port 'abc' in 'localhost:abc' is not a number"),
    ("127.0.0.1:70000", ValueError, "out of range"),
    ("127.0.0.1:-1", ValueError, "is not a number"),
    ("127.0.0.1:8O", ValueError, "is not a number"),
    ("::1:9000", ValueError, "ambiguous"),
    ("::1", ValueError, "ambiguous"),
    ("[::1]", ValueError, "[v6]:port"),
    ("[::1]9000", ValueError, "[v6]:port"),
    ("[::1:9000", ValueError, "[v6]:port"),
    ("[127.0.0.1]:80", ValueError, "only an IPv6 address"),
    ("local host:80", ValueError, "white space"),
    ("", ValueError, "has no port"),
]


@pytest.mark.parametrize("value, exc, words", BAD)
def test_refused_forms_name_the_argument(value: Any, exc: type[Exception], words: str) -> None:
    with pytest.raises(exc) as info:
        parse_address(value, name="upstream_addr")
    msg = str(info.value)
    assert msg.startswith("upstream_addr"), msg
    assert words in msg, msg
    if exc is TypeError or "range" not in words:
        # what the caller should write instead (or the bracketed form)
        assert FORMS in msg or "'[" in msg or "scope" in msg or "white" in msg, msg


@pytest.mark.parametrize("pair", [
    ("127.0.0.1", 80), ("::1", 9000), ("", 1), ("[::1]", 80), ("localhost", 80),
    ("127.0.0.1", 70000), ("127.0.0.1", -1), ("fe80::1%lo", 80), ("local host", 80),
    ("127.0.0.1 ", 80), ("127.0.0.1\u2003", 80), ("127.0.0.1", True), (b"127.0.0.1", 80),
])
def test_resolve_fast_path_agrees_with_the_checked_path(pair: tuple[Any, Any]) -> None:
    """resolve() caches a (str, int) tuple's result; a list takes the
    uncached path: the two give the same answer or the same error, twice
    over (the second call comes from the cache)."""
    def outcome(value: Any) -> Any:
        try:
            return resolve(value)
        except (TypeError, ValueError, sk.Error) as exc:
            return type(exc), str(exc)

    slow = outcome(list(pair))
    if isinstance(slow, tuple):  # the message shows the value given
        slow = slow[0], slow[1].replace(repr(list(pair)), repr(pair))
    assert outcome(pair) == slow
    assert outcome(pair) == slow
    if isinstance(slow, list):
        assert resolve(pair) is not resolve(pair)  # a new list each time


def test_default_host_fills_only_an_empty_host() -> None:
    assert parse_address(":9000", default_host="127.0.0.1") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:9000", default_host="127.0.0.1") == ("::1", 9000)


def test_the_printer() -> None:
    assert format_address(("127.0.0.1", 80)) == "127.0.0.1:80"
    assert format_address(("::1", 80)) == "[::1]:80"
    assert format_address(("::ffff:127.0.0.1", 80, 0, 0)) == "[::ffff:127.0.0.1]:80"
    assert format_address(("localhost", 0)) == "localhost:0"
    for text in ("127.0.0.1:80", "[::1]:80", "[2001:db8::1]:65535"):
        assert format_address(parse_address(text)) == text


# ------------------------------------------------------ every entry point


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_sync_entry_points_take_strings(host: str) -> None:
    """The issue's first failure: sk.connect("127.0.0.1:9000") reached
    0.0.0.1:2.  Strings now reach the right server, IPv6 too."""
    text = format_address((host, 0))
    with sk.serve(text, lambda m: b"echo " + m) as srv:
        assert srv.address[0] == host and srv.address[1] != 0
        there = format_address(srv.address)
        with sk.connect(there, timeout=STEP_TIMEOUT) as conn:
            assert conn.remote_address == srv.address
            assert conn.request(b"x", timeout=STEP_TIMEOUT) == b"echo x"
            assert f" -> {there}>" in repr(conn)
            if host == "::1":
                assert repr(conn).count("[::1]:") == 2, repr(conn)
        assert sk.call(there, b"y", timeout=STEP_TIMEOUT) == b"echo y"
    with sk.listen(text) as lst:
        assert repr(lst).startswith(f"<pysockkit.Listener {format_address(lst.address)} ")
        with sk.connect(lst.address + (0, 0) if host == "::1" else list(lst.address),
                        timeout=STEP_TIMEOUT):
            lst.accept(timeout=STEP_TIMEOUT).close()


SYNC_BAD: list[tuple[str, Callable[[Any], Any]]] = [
    ("connect", lambda a: sk.connect(a, timeout=STEP_TIMEOUT)),
    ("listen", lambda a: sk.listen(a)),
    ("call", lambda a: sk.call(a, b"x", timeout=STEP_TIMEOUT)),
    ("serve", lambda a: sk.serve(a)),
]


@pytest.mark.parametrize("entry", SYNC_BAD, ids=[n for n, _ in SYNC_BAD])
@pytest.mark.parametrize("value, exc", [
    (None, TypeError), (("127.0.0.1",), ValueError), ("127.0.0.1", ValueError),
    ("::1:80", ValueError), ("localhost:abc", ValueError), (("127.0.0.1", 70000), ValueError),
])
def test_sync_entry_points_refuse(entry: tuple[str, Callable[[Any], Any]], value: Any,
                                  exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^addr\b"):
        entry[1](value)


def test_aio_entry_points() -> None:
    async def main() -> None:
        async def handler(x: Any) -> Any:
            return x

        lst = await aio.listen("[::1]:0")
        there = format_address(lst.address)
        assert repr(lst).startswith(f"<pysockkit.aio.Listener {there} fd="), repr(lst)
        conn = await aio.connect(there, timeout=STEP_TIMEOUT)
        peer = await lst.accept(timeout=STEP_TIMEOUT)
        assert repr(conn) == (f"<pysockkit.aio.Connection {format_address(conn.local_address)}"
                              f" -> {there}>")
        await conn.send(b"hi")
        assert await peer.recv(timeout=STEP_TIMEOUT) == b"hi"
        for c in (conn, peer):
            c.close()
            await c.wait_closed()
        lst.close()
        srv = await aio.serve("127.0.0.1:0", handler)
        assert f" {format_address(srv.address)} " in repr(srv)
        srv.close()
        await srv.wait_closed()
        for bad, exc in ((None, TypeError), (("127.0.0.1",), ValueError), ("::1:80", ValueError)):
            with pytest.raises(exc, match=r"^addr\b"):
                await aio.connect(bad, timeout=STEP_TIMEOUT)
            with pytest.raises(exc, match=r"^addr\b"):
                await aio.listen(bad)
            with pytest.raises(exc, match=r"^addr\b"):
                await aio.serve(bad, handler)
        port = _free_port("::1")
        with pytest.raises(sk.Error, match=rf"connect to \[::1\]:{port}: "):
            await aio.connect(f"[::1]:{port}", timeout=STEP_TIMEOUT)

    run(main())


def test_simplex_entry_points() -> None:
    with simplex.Server("[::1]:0", "127.0.0.1:0", lambda b: b.upper()) as srv:
        req, rep = format_address(srv.request_address), format_address(srv.reply_address)
        assert req.startswith("[::1]:")
        assert repr(srv).startswith(f"<pysockkit.simplex.Server request={req} reply={rep} ")
        with simplex.Client(req, list(srv.reply_address), connect_timeout=STEP_TIMEOUT) as cli:
            assert cli.request(b"hi", timeout=STEP_TIMEOUT) == b"HI"
            assert repr(cli).startswith(f"<pysockkit.simplex.Client request={req} reply={rep} ")
        for name, args in (("request_addr", (None, srv.reply_address)),
                           ("reply_addr", (srv.request_address, "::1:80"))):
            with pytest.raises((TypeError, ValueError), match=rf"^{name}\b"):
                simplex.Client(*args, connect_timeout=STEP_TIMEOUT)
    for name, args in (("request_addr", ("nonsense", "127.0.0.1:0")),
                       ("reply_addr", ("127.0.0.1:0", ("127.0.0.1",)))):
        with pytest.raises(ValueError, match=rf"^{name}\b"):
            simplex.Server(*args, lambda b: b)


def test_fault_proxy_entry_points() -> None:
    with sk.serve("[::1]:0") as srv:
        with sk.FaultProxy(format_address(srv.address), "127.0.0.1:0") as proxy:
            assert proxy.upstream == srv.address
            assert repr(proxy) == (f"<pysockkit.FaultProxy {format_address(proxy.address)} -> "
                                   f"{format_address(srv.address)} (no faults)>")
            with sk.connect(proxy.address, timeout=STEP_TIMEOUT) as conn:
                assert conn.request(b"through", timeout=STEP_TIMEOUT) == b"through"
        with pytest.raises(TypeError, match=r"^upstream_addr\b"):
            sk.FaultProxy(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^listen_addr\b"):
            sk.FaultProxy(srv.address, "127.0.0.1")


def test_testing_helpers_take_strings() -> None:
    with sk.listen("[::1]:0") as lst:
        there = format_address(lst.address)
        assert assert_state(there, "LISTEN", within=STEP_TIMEOUT) is sk.TcpState.LISTEN
        with sk.connect(there, timeout=STEP_TIMEOUT) as cli, \
                lst.accept(timeout=STEP_TIMEOUT) as peer:
            here = format_address(cli.local_address)
            assert assert_state((here, there), "ESTABLISHED",
                                within=STEP_TIMEOUT) is sk.TcpState.ESTABLISHED
            with pytest.raises(AssertionError) as info:
                assert_state(cli, "LISTEN", within=0)
            assert f"{here} -> {there}" in str(info.value), str(info.value)
            cli.send(b"a")
            assert assert_frames(peer, [b"a"], within=STEP_TIMEOUT) == [b"a"]
    with pytest.raises(ValueError, match=r"^target\b"):
        assert_state("::1:80", "LISTEN")
    with pytest.raises(ValueError, match=r"^target\[0\]"):
        assert_state(("nonsense", "127.0.0.1:80"), "LISTEN")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_error_messages_print_the_address(host: str) -> None:
    with sk.listen((host, 0)) as lst:
        there = format_address(lst.address)
        with pytest.raises(sk.Error, match=rf"another socket holds {_re(there)}: "):
            sk.listen(there)
    port = _free_port(host)
    there = format_address((host, port))
    with pytest.raises(sk.Error, match=rf"nothing listens on {_re(there)}: "):
        sk.connect(there, timeout=STEP_TIMEOUT)


def _re(text: str) -> str:
    return text.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")


def test_observation_prints_brackets() -> None:
    with sk.listen("[::1]:0") as lst, sk.connect(lst.address, timeout=STEP_TIMEOUT) as cli, \
            lst.accept(timeout=STEP_TIMEOUT):
        port = lst.address[1]
        rows = str(sk.sockets(port=port)).splitlines()[1:]
        assert rows and all("[::1]:" in r for r in rows), rows
        assert any(f"[::1]:{port}" in r for r in rows), rows
        with sk.watch(cli) as trace:
            assert trace.wait_for("ESTABLISHED", timeout=STEP_TIMEOUT)
        assert f"[::1]:{port}" in repr(trace) or f"[::1]:{port}" in str(trace), str(trace)


# ------------------------------------------------------------- timeouts


def test_the_timeout_rule() -> None:
    assert check_timeout(None) is None
    assert check_timeout(0) == 0.0 and check_timeout(2) == 2.0
    assert check_timeout(float("inf")) is None  # forever, as the C core does
    for bad in (-1, -0.001, float("nan"), -math.inf):
        with pytest.raises(ValueError, match=r"^timeout must be None \(wait forever\) or a number"):
            check_timeout(bad)
    for bad in ("1", True, False, b"1", [1]):
        with pytest.raises(TypeError, match="^timeout must be"):
            check_timeout(bad)
    # int and float take a fast path; other Reals the checked one
    import fractions
    assert check_timeout(fractions.Fraction(1, 2)) == 0.5
    assert type(check_timeout(3)) is float
    with pytest.raises(TypeError, match="^settle must be a number of seconds >= 0, not None"):
        check_timeout(None, "settle", allow_none=False)


NEGATIVE = [-1, -0.001, float("nan")]


def _sync_calls(cli: sk.Connection, lst: sk.Listener,
                srv: sk.Server) -> list[tuple[str, Callable[[Any], Any]]]:
    return [
        ("recv", lambda t: cli.recv(timeout=t)),
        ("recv_many", lambda t: cli.recv_many(timeout=t)),
        ("send", lambda t: cli.send(b"x", timeout=t)),
        ("send_many", lambda t: cli.send_many([b"x"], timeout=t)),
        ("request", lambda t: cli.request(b"x", timeout=t)),
        ("flush", lambda t: cli.flush(timeout=t)),
        ("shutdown", lambda t: cli.shutdown("read", timeout=t)),
        ("accept", lambda t: lst.accept(timeout=t)),
        ("connect", lambda t: sk.connect(lst.address, timeout=t)),
        ("call", lambda t: sk.call(srv.address, b"x", timeout=t)),
        ("Server.close", lambda t: srv.close(timeout=t)),
        ("serve(read_timeout)", lambda t: sk.serve(read_timeout=t)),
        ("serve(write_timeout)", lambda t: sk.serve(write_timeout=t)),
    ]


@pytest.mark.parametrize("bad", NEGATIVE)
def test_sync_timeouts(bad: float) -> None:
    with sk.listen() as lst, sk.serve() as srv, \
            sk.connect(lst.address, timeout=STEP_TIMEOUT) as cli:
        for name, call in _sync_calls(cli, lst, srv):
            with pytest.raises(ValueError, match=r"timeout must be None \(wait forever\)"):
                call(bad)
            with pytest.raises(TypeError, match="timeout must be"):
                call("1")
    # the threaded duplex: request_async, its future, get
    corr = sk.Framing(correlation=True)
    with sk.listen(framing=corr) as lst, \
            sk.connect(lst.address, timeout=STEP_TIMEOUT, framing=corr) as dup, \
            lst.accept(timeout=STEP_TIMEOUT):          # never answers
        with pytest.raises(ValueError, match="timeout must be"):
            dup.request_async(b"x", timeout=bad)
        fut = dup.request_async(b"x", timeout=STEP_TIMEOUT)
        with pytest.raises(ValueError, match="timeout must be"):
            fut.result(timeout=bad)
        assert dup.duplex is not None
        with pytest.raises(ValueError, match="timeout must be"):
            dup.duplex.get(timeout=bad)


def test_sync_zero_and_forever(conn_pair: Any) -> None:
    cli, peer = conn_pair()
    with pytest.raises(sk.Timeout):
        cli.recv(timeout=0)               # nothing there: no wait
    peer.send(b"a")
    assert cli.recv(timeout=math.inf) == b"a"   # inf: forever, and it came
    # a frame already queued is taken with timeout=0: test_timeouts.py


@pytest.mark.parametrize("bad", NEGATIVE)
def test_aio_timeouts(bad: float) -> None:
    async def main() -> None:
        lst = await aio.listen("127.0.0.1:0")
        conn = await aio.connect(lst.address, timeout=STEP_TIMEOUT,
                                 framing=sk.Framing(correlation=True))
        peer = await lst.accept(timeout=STEP_TIMEOUT)
        calls: list[tuple[str, Callable[[Any], Any]]] = [
            ("connect", lambda t: aio.connect(lst.address, timeout=t)),
            ("accept", lambda t: lst.accept(timeout=t)),
            ("recv", lambda t: conn.recv(timeout=t)),
            ("recv_many", lambda t: conn.recv_many(timeout=t)),
            ("send", lambda t: conn.send(b"x", timeout=t)),
            ("send_many", lambda t: conn.send_many([b"x"], timeout=t)),
            ("drain", lambda t: conn.drain(timeout=t)),
            ("request", lambda t: conn.request(b"x", timeout=t)),
            ("reply", lambda t: conn.reply(1, b"x", timeout=t)),
        ]
        for name, call in calls:
            with pytest.raises(ValueError, match=r"timeout must be None \(wait forever\)"):
                await call(bad)
            with pytest.raises(TypeError, match="timeout must be"):
                await call("1")
        with pytest.raises(ValueError, match="timeout must be"):
            conn.request_nowait(b"x", timeout=bad)
        # 0: no wait; a queued frame is still returned
        with pytest.raises(sk.Timeout):
            await conn.recv(timeout=0)
        await peer.send(b"q")
        assert await conn.recv(timeout=math.inf) == b"q"
        for c in (conn, peer):
            c.close()
            await c.wait_closed()
        lst.close()

    run(main())


@pytest.mark.parametrize("bad", NEGATIVE)
def test_simplex_proxy_testing_timeouts(bad: float) -> None:
    with simplex.Server("127.0.0.1:0", "127.0.0.1:0", lambda b: b) as srv:
        for kw in ("handshake_timeout", "send_timeout"):
            with pytest.raises(ValueError, match=rf"^{kw} must be"):
                simplex.Server("127.0.0.1:0", "127.0.0.1:0", lambda b: b, **{kw: bad})
        with pytest.raises(ValueError, match="^connect_timeout must be"):
            simplex.Client(srv.request_address, srv.reply_address, connect_timeout=bad)
        with simplex.Client(srv.request_address, srv.reply_address,
                            connect_timeout=STEP_TIMEOUT) as cli:
            for call in (lambda t: cli.request(b"x", timeout=t),
                         lambda t: cli.request_async(b"x", timeout=t),
                         lambda t: cli.close(timeout=t)):
                with pytest.raises(ValueError, match="^timeout must be"):
                    call(bad)
            assert cli.request(b"x", timeout=math.inf) == b"x"
        with pytest.raises(ValueError, match="^timeout must be"):
            srv.close(timeout=bad)
        with sk.FaultProxy(srv.request_address) as proxy:
            with pytest.raises(ValueError, match="^timeout must be"):
                proxy.wait_connections(0, timeout=bad)
            assert proxy.wait_connections(0, timeout=None) == []
    with sk.listen() as lst, sk.connect(lst.address, timeout=STEP_TIMEOUT) as cli:
        with pytest.raises(ValueError, match="^within must be"):
            assert_state(cli, "ESTABLISHED", within=bad)
        with pytest.raises(ValueError, match="^interval must be"):
            assert_state(cli, "ESTABLISHED", interval=bad)
        with pytest.raises(ValueError, match="^within must be"):
            assert_frames(cli, [], within=bad)
        with pytest.raises(ValueError, match="^settle must be"):
            assert_frames(cli, [], settle=bad)
        with sk.watch(cli) as trace, pytest.raises(ValueError, match="^timeout must be"):
            trace.wait_for("CLOSED", timeout=bad)
    with pytest.raises(ValueError, match="^timeout must be"):
        sk.lab.reproduce("LISTEN", timeout=bad)
