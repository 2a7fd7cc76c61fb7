"""Orderly and abortive close, half-close, use after close, context managers."""

from __future__ import annotations

import gc
import shutil
import socket
import subprocess
import time

import pytest

import pysockkit as sk
from helpers import STEP_TIMEOUT, recv_all, scaled, start_thread, wait_blocked_on_socket


# ------------------------------------------------------------- half-close


def test_shutdown_write_then_peer_sees_close_and_can_still_reply(conn_pair):
    cli, srv = conn_pair()
    cli.send(b"first")
    cli.send_many([b"second", b""])
    cli.shutdown("write")
    assert srv.recv(timeout=STEP_TIMEOUT) == b"first"
    assert srv.recv_many(timeout=STEP_TIMEOUT) == [b"second", b""]
    with pytest.raises(sk.ConnectionClosed) as ei:
        srv.recv(timeout=STEP_TIMEOUT)
    assert type(ei.value) is sk.ConnectionClosed  # orderly: not a reset, not incomplete
    with pytest.raises(sk.ConnectionClosed):  # sticky
        srv.recv(timeout=STEP_TIMEOUT)
    # the half-closed side still receives
    srv.send(b"reply")
    srv.send(b"reply2")
    assert cli.recv(timeout=STEP_TIMEOUT) == b"reply"
    assert cli.recv(timeout=STEP_TIMEOUT) == b"reply2"
    # but can no longer send
    with pytest.raises(sk.ConnectionClosed):
        cli.send(b"too late")
    with pytest.raises(sk.ConnectionClosed):
        cli.send_many([b"too late"])
    cli.shutdown("write")  # idempotent
    srv.shutdown("write")
    with pytest.raises(sk.ConnectionClosed):
        cli.recv(timeout=STEP_TIMEOUT)


def test_iteration_ends_at_orderly_close(conn_pair):
    cli, srv = conn_pair()
    msgs = [b"m%d" % i for i in range(50)]
    cli.send_many(msgs)
    cli.shutdown("write")
    got = []
    for m in srv:
        got.append(m)
        assert len(got) <= len(msgs)
    assert got == msgs


def test_shutdown_write_flushes_a_torn_frame_first(conn_to_raw):
    conn, raw = conn_to_raw(rcvbuf=4096)
    frame = bytes(range(256)) * (32 * 1024)  # 8 MiB
    with pytest.raises(sk.Timeout):
        conn.send(frame, timeout=0.2)
    assert conn.unsent > 0
    # still stuck: shutdown times out, keeps the tail and sends no FIN
    with pytest.raises(sk.Timeout):
        conn.shutdown("write", timeout=0.1)
    assert conn.unsent > 0
    reader = start_thread(recv_all, raw, STEP_TIMEOUT, name="reader")
    conn.shutdown("write", timeout=STEP_TIMEOUT)
    data = reader.join_result()
    assert conn.unsent == 0
    assert data[:4] == len(frame).to_bytes(4, "big")
    assert data[4:] == frame


def test_shutdown_read_and_both(conn_pair):
    cli, srv = conn_pair()
    cli.shutdown("read")
    with pytest.raises(sk.ConnectionClosed):
        cli.recv(timeout=STEP_TIMEOUT)
    cli.send(b"still sending")
    assert srv.recv(timeout=STEP_TIMEOUT) == b"still sending"
    srv.shutdown("both")
    with pytest.raises(sk.ConnectionClosed):
        srv.recv(timeout=STEP_TIMEOUT)
    with pytest.raises(sk.ConnectionClosed):
        srv.send(b"x")
    with pytest.raises(ValueError):
        cli.shutdown("sideways")


# ------------------------------------------------------------------ abort


def test_abort_resets_the_peer(conn_pair):
    cli, srv = conn_pair()
    cli.send(b"before the reset")
    cli.abort()
    assert cli.closed
    # what was sent before the RST is still delivered first
    assert srv.recv(timeout=STEP_TIMEOUT) == b"before the reset"
    with pytest.raises(sk.ConnectionReset) as ei:
        srv.recv(timeout=STEP_TIMEOUT)
    exc = ei.value
    assert isinstance(exc, sk.ConnectionClosed)
    assert isinstance(exc, ConnectionResetError)
    assert isinstance(exc, ConnectionError)
    with pytest.raises(sk.ConnectionClosed):  # sticky, still a closed-family error
        srv.recv(timeout=STEP_TIMEOUT)


def test_send_to_aborted_peer_raises_reset(conn_pair):
    cli, srv = conn_pair()
    cli.abort()
    with pytest.raises(sk.ConnectionReset):
        for _ in range(100):  # the first send may still be accepted locally
            srv.send(b"anyone there?", timeout=STEP_TIMEOUT)
            time.sleep(0.01)


def test_abort_leaves_no_time_wait(conn_pair):
    if shutil.which("ss") is None:
        pytest.skip("iproute2 ss is not installed")
    cli, srv = conn_pair()
    cport, sport = cli.local_address[1], srv.local_address[1]
    cli.abort()
    srv.close()
    # this exact 4-tuple, either way round (older runs may have left
    # TIME_WAIT sockets on one of the two ports with other peers)
    flt = (
        f"( ( sport = :{cport} and dport = :{sport} ) or "
        f"( sport = :{sport} and dport = :{cport} ) )"
    )
    out = subprocess.run(
        ["ss", "-tanH", "state", "time-wait", flt],
        capture_output=True, text=True, timeout=STEP_TIMEOUT, check=True,
    ).stdout
    assert out.strip() == ""


# ------------------------------------------------------- use after close


def test_using_a_closed_connection_raises_connection_closed(conn_pair):
    cli, srv = conn_pair()
    cli.close()
    assert cli.closed
    assert cli.fileno() == -1
    calls = {
        "send": lambda: cli.send(b"x"),
        "send_many": lambda: cli.send_many([b"x"]),
        "recv": lambda: cli.recv(timeout=0),
        "recv_many": lambda: cli.recv_many(timeout=0),
        "request": lambda: cli.request(b"x", timeout=0.1),
        "flush": lambda: cli.flush(timeout=0.1),
        "shutdown": lambda: cli.shutdown("write"),
        "info": cli.info,
        "local_address": lambda: cli.local_address,
        "remote_address": lambda: cli.remote_address,
    }
    for name, call in calls.items():
        with pytest.raises(sk.ConnectionClosed):
            call()
    assert cli.state is sk.TcpState.CLOSED  # a fact, not an error
    cli.close()  # idempotent
    cli.abort()
    assert list(cli) == []
    with pytest.raises(sk.ConnectionClosed):
        srv.recv(timeout=STEP_TIMEOUT)


def test_closed_listener(listener):
    lst = listener()
    lst.close()
    assert lst.closed
    assert lst.fileno() == -1
    with pytest.raises(sk.ConnectionClosed):
        lst.accept(timeout=0)
    lst.close()


def test_close_delivers_queued_data(conn_to_raw):
    conn, raw = conn_to_raw()
    big = bytes(range(256)) * 16384  # 4 MiB
    reader = start_thread(recv_all, raw, STEP_TIMEOUT, name="reader")
    conn.send(big, timeout=STEP_TIMEOUT)
    conn.send(b"tail", timeout=STEP_TIMEOUT)
    conn.close()
    data = reader.join_result()
    assert data == len(big).to_bytes(4, "big") + big + b"\x00\x00\x00\x04tail"


# -------------------------------------------------- close from a thread


def _blocked_call(conn: sk.Connection, op: str):
    t0 = time.monotonic()
    try:
        if op == "recv":
            conn.recv()
        elif op == "recv_many":
            conn.recv_many()
        elif op == "request":
            conn.request(b"q")
        elif op == "send":
            conn.send(bytes(8 << 20))
        elif op == "iterate":
            for _ in conn:
                pass
            return ("iteration ended", time.monotonic())
    except BaseException as exc:
        return (exc, time.monotonic())
    return ("returned", time.monotonic())


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("op", ["recv", "recv_many", "request", "send", "iterate"])
def test_close_from_another_thread_wakes_a_blocked_call(conn_to_raw, op, how):
    conn, raw = conn_to_raw(rcvbuf=4096)  # raw never reads: a send blocks
    t = start_thread(_blocked_call, conn, op, name=f"blocked-{op}")
    wait_blocked_on_socket(t)  # the call really waits on the socket
    assert t.is_alive(), f"{op} did not block"
    t_close = time.monotonic()
    getattr(conn, how)()
    result, t_end = t.join_result(timeout=scaled(2.0))
    assert conn.closed
    assert time.monotonic() - t_close < scaled(1.0), "close() itself took too long"
    assert t_end - t_close < scaled(1.0), f"the blocked {op} woke only after {t_end - t_close:.3f} s"
    if op == "iterate":
        assert result == "iteration ended"
    else:
        assert isinstance(result, sk.ConnectionClosed), f"{op} ended with {result!r}"


def test_listener_close_from_another_thread_wakes_accept(listener):
    lst = listener()
    t = start_thread(_blocked_accept, lst, name="blocked-accept")
    wait_blocked_on_socket(t)
    t_close = time.monotonic()
    lst.close()
    result, t_end = t.join_result(timeout=scaled(2.0))
    assert t_end - t_close < scaled(1.0)
    assert isinstance(result, sk.Error), f"accept ended with {result!r}"


def _blocked_accept(lst: sk.Listener):
    try:
        c = lst.accept()
    except BaseException as exc:
        return (exc, time.monotonic())
    c.close()
    return ("accepted", time.monotonic())


# ------------------------------------------------------ context managers


def test_context_managers_close(closer):
    with sk.listen(("127.0.0.1", 0)) as lst:
        with sk.connect(lst.address, timeout=STEP_TIMEOUT) as cli:
            with lst.accept(timeout=STEP_TIMEOUT) as srv:
                assert cli.local_address == srv.remote_address
                assert cli.remote_address == srv.local_address == lst.address
                cli.send(b"x")
                assert srv.recv(timeout=STEP_TIMEOUT) == b"x"
            assert srv.closed
            with pytest.raises(sk.ConnectionClosed):
                cli.recv(timeout=STEP_TIMEOUT)
        assert cli.closed
    assert lst.closed


def test_context_manager_closes_on_exception(listener):
    lst = listener()
    with pytest.raises(RuntimeError):
        with sk.connect(lst.address, timeout=STEP_TIMEOUT) as cli:
            raise RuntimeError("boom")
    assert cli.closed
    peer = lst.accept(timeout=STEP_TIMEOUT)
    with peer:
        with pytest.raises(sk.ConnectionClosed):
            peer.recv(timeout=STEP_TIMEOUT)


def test_unclosed_connection_warns(listener):
    lst = listener()
    raw = socket.create_connection(lst.address, timeout=STEP_TIMEOUT)
    try:
        peer = lst.accept(timeout=STEP_TIMEOUT)
        fd = peer.fileno()
        with pytest.warns(ResourceWarning, match="unclosed"):
            del peer
            gc.collect()
        # the finaliser closed the socket: the raw peer sees EOF
        raw.settimeout(STEP_TIMEOUT)
        assert raw.recv(10) == b""
        assert fd >= 0
    finally:
        raw.close()


def test_peer_close_after_frames(conn_pair):
    cli, srv = conn_pair()
    cli.send_many([b"a", b"b", b"c"])
    cli.close()
    got = []
    with pytest.raises(sk.ConnectionClosed):
        for _ in range(10):
            got.append(srv.recv(timeout=STEP_TIMEOUT))
    assert got == [b"a", b"b", b"c"]
    assert srv.buffered == 0


def test_repr(conn_pair):
    cli, srv = conn_pair()
    assert "Connection" in repr(cli)
    cli.close()
    assert "closed" in repr(cli)
