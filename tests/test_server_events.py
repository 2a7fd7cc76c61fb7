"""Per-client lifecycle events of servers (issue 15, item 3; docs/reconnect.md).

``sk.serve(on_event=)`` / ``server.events()`` and the same for
``aio.serve``: ``accepted`` (local, remote), ``lost`` (the exit reason the
server records, and its exception) and ``closed`` (the server closed the
client: stopped, or on_connection finished), with real clients on
loopback: one that closes, one that aborts (RST), one that sends half a
frame, and clients still connected at close().
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

import pytest

import pysockkit as sk
from pysockkit import aio

from helpers import STEP_TIMEOUT, scaled, wait_until

Factory = Callable[[Optional[Callable[[sk.ConnectionEvent], Any]]], sk.Server]


def _reactor(on_event: Optional[Callable[[sk.ConnectionEvent], Any]]) -> sk.Server:
    return sk.serve(("127.0.0.1", 0), handler=lambda m: m, on_event=on_event)


def _threaded(on_event: Optional[Callable[[sk.ConnectionEvent], Any]]) -> sk.Server:
    def echo(conn: sk.Connection) -> None:
        while True:
            conn.send(conn.recv(timeout=STEP_TIMEOUT))

    return sk.serve(("127.0.0.1", 0), on_connection=echo, on_event=on_event)


@pytest.fixture(params=[_reactor, _threaded], ids=["reactor", "on_connection"])
def make_server(request: pytest.FixtureRequest) -> Iterator[Factory]:
    yield request.param


def _client(addr: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(addr, timeout=STEP_TIMEOUT)
    return s


def _echo_once(s: socket.socket) -> None:
    s.sendall(struct.pack(">I", 2) + b"hi")
    got = b""
    while len(got) < 6:
        chunk = s.recv(6 - len(got))
        assert chunk, "the server closed before echoing"
        got += chunk
    assert got == struct.pack(">I", 2) + b"hi"


def _abort(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST


def _events_of(srv: sk.Server, port: int, n: int) -> list[sk.ConnectionEvent]:
    """The first n events of the client on local port ``port`` (bounded wait)."""
    got: list[sk.ConnectionEvent] = []

    def have() -> bool:
        got[:] = [ev for ev in srv.events(wait=False)
                  if (ev.details.get("remote") or ("", -1))[1] == port]
        return len(got) >= n

    assert wait_until(have, timeout=STEP_TIMEOUT), [str(e) for e in srv.events(wait=False)]
    return got


def test_accepted_then_lost_closed_for_a_client_that_closes(make_server: Factory) -> None:
    seen: list[sk.ConnectionEvent] = []
    srv = make_server(seen.append)
    try:
        s = _client(srv.address)
        port = s.getsockname()[1]
        _echo_once(s)
        s.close()
        accepted, lost = _events_of(srv, port, 2)
        assert accepted.kind == "accepted"
        assert accepted.details["local"] == srv.address
        assert accepted.details["remote"] == ("127.0.0.1", port)
        assert lost.kind == "lost" and lost.details["reason"] == "closed"
        assert isinstance(lost.details["exception"], sk.ConnectionClosed)
        assert accepted.time <= lost.time
        # the callback got the same events, in the same order
        assert wait_until(lambda: len(seen) >= 2, timeout=STEP_TIMEOUT)
        assert seen[:2] == [accepted, lost]
    finally:
        srv.close()


def test_lost_reset_for_a_client_that_aborts(make_server: Factory) -> None:
    srv = make_server(None)
    try:
        s = _client(srv.address)
        port = s.getsockname()[1]
        _echo_once(s)
        _abort(s)
        _, lost = _events_of(srv, port, 2)
        assert lost.kind == "lost" and lost.details["reason"] == "reset", str(lost)
        assert isinstance(lost.details["exception"], sk.ConnectionReset)
        assert lost.details["remote"] == ("127.0.0.1", port)
    finally:
        srv.close()


def test_lost_incomplete_for_a_truncated_frame(make_server: Factory) -> None:
    srv = make_server(None)
    try:
        s = _client(srv.address)
        port = s.getsockname()[1]
        s.sendall(struct.pack(">I", 10) + b"abc")  # 3 of 10 bytes, then FIN
        s.close()
        _, lost = _events_of(srv, port, 2)
        assert lost.kind == "lost" and lost.details["reason"] == "incomplete", str(lost)
        assert isinstance(lost.details["exception"], sk.IncompleteFrame)
    finally:
        srv.close()


def test_closed_for_clients_still_connected_at_close(make_server: Factory) -> None:
    seen: list[sk.ConnectionEvent] = []
    srv = make_server(seen.append)
    clients = [_client(srv.address) for _ in range(3)]
    try:
        for c in clients:
            _echo_once(c)  # accepted and served before close()
        ports = {c.getsockname()[1] for c in clients}
        reader = srv.events(timeout=STEP_TIMEOUT)  # waits; ends once the server closed
        srv.close(timeout=STEP_TIMEOUT)
        evs = list(reader)
        assert reader.ended and reader.dropped == 0
        closed = [ev for ev in evs if ev.kind == "closed"]
        assert {ev.details["remote"][1] for ev in closed} == ports
        assert all(ev.details["reason"] == "stopped" for ev in closed)
        assert [ev.kind for ev in evs].count("accepted") == 3
        assert not [ev for ev in evs if ev.kind == "lost"]
        assert [ev.kind for ev in seen] == [ev.kind for ev in evs]
        assert srv.exits.stopped == 3
    finally:
        for c in clients:
            c.close()


def test_a_callback_that_raises_is_logged_and_the_server_goes_on(
        make_server: Factory, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def bad(ev: sk.ConnectionEvent) -> None:
        calls.append(ev.kind)
        raise RuntimeError("callback bug")

    srv = make_server(bad)
    try:
        with caplog.at_level(logging.ERROR, logger="pysockkit"):
            for _ in range(2):
                s = _client(srv.address)
                _echo_once(s)
                s.close()
            assert wait_until(lambda: calls.count("lost") == 2, timeout=STEP_TIMEOUT)
        assert sk.call(srv.address, b"still up", timeout=STEP_TIMEOUT) == b"still up"
        assert any("on_event callback raised" in r.getMessage() for r in caplog.records)
        assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError)
                   for r in caplog.records)
    finally:
        srv.close()


def test_each_client_gets_accepted_then_one_end_with_many_handler_threads() -> None:
    """workers=4 take the reactor's batches in order but may record them
    out of order: each client's events still come as accepted, then
    exactly one end."""
    n = 60
    with sk.serve(("127.0.0.1", 0), handler=lambda m: m, workers=4) as srv:
        ports = []
        for i in range(n):
            s = _client(srv.address)
            ports.append(s.getsockname()[1])
            if i % 3 == 0:
                _echo_once(s)
            if i % 2:
                _abort(s)
            else:
                s.close()
        assert wait_until(lambda: srv.exits.total == n, timeout=STEP_TIMEOUT), srv.exits
        evs = list(srv.events(wait=False))
    per: dict[int, list[str]] = {p: [] for p in ports}
    for ev in evs:
        per[ev.details["remote"][1]].append(ev.kind)
    # (a port an aborted client freed may come back for a later one)
    assert all(kinds == ["accepted", "lost"] * ports.count(p) for p, kinds in per.items()), per


def test_events_without_a_callback_and_a_late_reader_sees_the_log() -> None:
    with sk.serve(("127.0.0.1", 0)) as srv:
        assert sk.call(srv.address, b"x", timeout=STEP_TIMEOUT) == b"x"
        assert wait_until(lambda: srv.exits.total == 1, timeout=STEP_TIMEOUT)
        kinds = [ev.kind for ev in srv.events(wait=False)]
        assert kinds == ["accepted", "lost"]
    # after close the waiting reader ends at once
    assert [ev.kind for ev in srv.events(timeout=STEP_TIMEOUT)] == ["accepted", "lost"]


def test_processes_refuses_events_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="per process"):
        sk.serve(("127.0.0.1", 0), handler=lambda m: m, processes=2,
                 on_event=lambda ev: None)
    with sk.serve(("127.0.0.1", 0), handler=lambda m: m, processes=2) as srv:
        with pytest.raises(ValueError, match="processes=1"):
            srv.events()


def test_a_non_callable_on_event_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="on_event"):
        sk.serve(("127.0.0.1", 0), on_event=42)  # type: ignore[arg-type]


# ------------------------------------------------------------------- aio


def _run(coro: Any) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, scaled(20.0))
    return asyncio.run(main())


async def _aclient(addr: tuple[str, int]) -> tuple[socket.socket, int]:
    """A raw non-blocking client socket connected to addr, and its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, addr)
    return s, s.getsockname()[1]


async def _aevents_of(srv: aio.Server, port: int, n: int) -> list[sk.ConnectionEvent]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT
    while True:
        got = [ev async for ev in srv.events(wait=False)
               if (ev.details.get("remote") or ("", -1))[1] == port]
        if len(got) >= n:
            return got
        assert loop.time() < deadline, "events did not arrive in time"
        await asyncio.sleep(0.01)


def test_aio_accepted_lost_reset_incomplete_and_closed() -> None:
    async def main() -> None:
        seen: list[sk.ConnectionEvent] = []
        srv = await aio.serve(("127.0.0.1", 0), on_event=seen.append)
        waiting = asyncio.ensure_future(_collect(srv))
        loop = asyncio.get_running_loop()
        frame = struct.pack(">I", 2) + b"hi"
        # a client that closes
        c, port = await _aclient(srv.address)
        await loop.sock_sendall(c, frame)
        got = b""
        while len(got) < 6:
            got += await loop.sock_recv(c, 6 - len(got))
        assert got == frame
        c.close()
        accepted, lost = await _aevents_of(srv, port, 2)
        assert accepted.kind == "accepted" and accepted.details["local"] == srv.address
        assert accepted.details["remote"] == ("127.0.0.1", port)
        assert lost.kind == "lost" and lost.details["reason"] == "closed"
        # a client that aborts
        c, port = await _aclient(srv.address)
        await _aevents_of(srv, port, 1)
        _abort(c)
        _, lost = await _aevents_of(srv, port, 2)
        assert lost.details["reason"] == "reset", str(lost)
        assert isinstance(lost.details["exception"], sk.ConnectionReset)
        # a truncated frame
        c, port = await _aclient(srv.address)
        await loop.sock_sendall(c, struct.pack(">I", 10) + b"abc")
        c.close()
        _, lost = await _aevents_of(srv, port, 2)
        assert lost.details["reason"] == "incomplete", str(lost)
        assert isinstance(lost.details["exception"], sk.IncompleteFrame)
        # one still connected at close
        c, port = await _aclient(srv.address)
        await _aevents_of(srv, port, 1)
        srv.close()
        await srv.wait_closed()
        evs = await waiting  # ended by wait_closed
        last = [ev for ev in evs if (ev.details.get("remote") or ("", -1))[1] == port]
        assert [ev.kind for ev in last] == ["accepted", "closed"]
        assert last[1].details["reason"] == "stopped"
        assert [ev.kind for ev in seen] == [ev.kind for ev in evs]
        c.close()

    _run(main())


async def _collect(srv: aio.Server) -> list[sk.ConnectionEvent]:
    return [ev async for ev in srv.events(timeout=STEP_TIMEOUT)]


def test_aio_a_callback_that_raises_is_logged_and_the_server_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    def bad(ev: sk.ConnectionEvent) -> None:
        raise RuntimeError("callback bug")

    async def main() -> None:
        srv = await aio.serve(("127.0.0.1", 0), on_event=bad)
        try:
            for _ in range(2):
                c = await aio.connect(srv.address, timeout=STEP_TIMEOUT)
                await c.send(b"x")
                assert await c.recv(timeout=STEP_TIMEOUT) == b"x"
                c.close()
                await c.wait_closed()
        finally:
            srv.close()
            await srv.wait_closed()

    with caplog.at_level(logging.ERROR, logger="pysockkit"):
        _run(main())
    assert sum("on_event callback raised" in r.getMessage() for r in caplog.records) >= 3


def test_events_from_another_thread_reach_an_aio_reader() -> None:
    """aiter_events wakes the loop thread-safely: a sync server's events
    read with ``async for`` from a loop in another thread."""
    srv = sk.serve(("127.0.0.1", 0))
    got: list[str] = []

    async def main() -> None:
        from pysockkit.aio._events import aiter_events
        async for ev in aiter_events(srv._book.events, True, STEP_TIMEOUT):
            got.append(ev.kind)
            if ev.kind == "lost":
                return

    t = threading.Thread(target=lambda: _run(main()))
    t.start()
    try:
        assert sk.call(srv.address, b"x", timeout=STEP_TIMEOUT) == b"x"
        t.join(STEP_TIMEOUT)
        assert not t.is_alive()
        assert got == ["accepted", "lost"]
    finally:
        srv.close()
