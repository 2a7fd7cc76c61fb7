"""The pytest plugin (pysockkit/_pytest_plugin.py), run on sample suites
with pytester: fixtures, leak reports, faults seen as typed errors by a
pysockkit client and as the stdlib's errors by a plain socket client, and
the assertion helpers' failure messages.

The inner runs are in-process and load no plugin but this one
(PYTEST_DISABLE_PLUGIN_AUTOLOAD plus ``-p pysockkit._pytest_plugin``): other
installed plugins cost a second per run.  One test checks the real thing:
with pysockkit installed, the ``pytest11`` entry point loads the plugin and
``-p no:pysockkit`` removes it.
"""

from __future__ import annotations

import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent


def _autoloaded() -> bool:
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == "pysockkit._pytest_plugin" for ep in entry_points(group="pytest11"))


AUTOLOADED = _autoloaded()
PLUGIN = ["-p", "pysockkit._pytest_plugin"]

# The plugin module is already imported in this process, so pytest cannot
# assertion-rewrite it for an in-process run and says so; that is expected.
INI = """
[pytest]
filterwarnings =
    error
    ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """run(source, *args) -> RunResult: the source as test_sample.py."""
    pytester.makeini(INI)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def go(source: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_sample=source)
        return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", *args)

    return go


# ------------------------------------------------------------ registration


def test_entry_point_is_declared_in_pyproject() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(
        r'^\[project\.entry-points\.pytest11\]\s*\npysockkit\s*=\s*"pysockkit\._pytest_plugin"',
        text,
        re.M,
    )


@pytest.mark.skipif(not AUTOLOADED, reason="pysockkit is not installed (no pytest11 entry point)")
def test_installed_plugin_is_active_and_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample="""
def test_uses_fixture(sk_pair):
    assert sk_pair[0].request is not None
""")
    r = pytester.runpytest("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    r = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:pysockkit")
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines(["*fixture 'sk_pair' not found*"])


def test_fixtures_are_listed_and_header_shows_mode(run) -> None:
    r = run("def test_x(): pass\n", "--fixtures")
    for name in ("sk_server", "sk_server_factory", "sk_pair", "sk_connections",
                 "sk_proxy", "sk_proxy_factory", "sk_lab"):
        r.stdout.fnmatch_lines([f"{name}*"])
    r = run("def test_x(): pass\n")
    r.stdout.fnmatch_lines(["pysockkit *: leak check fixtures (fail)"])


# ------------------------------------------------------------ a user's suite

USER_SUITE = '''
import socket
import pytest
import pysockkit as sk

# the outer suite's time scale (helpers.scaled) for every bound here
T = 2.0 * float(__import__("os").environ.get("PYSOCKKIT_TIME_SCALE") or 1)
from pysockkit.testing import assert_frames, assert_state


def test_echo_server(sk_server):
    assert sk.call(sk_server.address, b"ping", timeout=T) == b"ping"


def test_custom_handler(sk_server_factory):
    srv = sk_server_factory(lambda m: m.upper())
    assert sk.call(srv.address, b"shout", timeout=T) == b"SHOUT"


def test_handler_without_reply(sk_server_factory):
    seen = []
    srv = sk_server_factory(lambda m: seen.append(m))
    with sk.connect(srv.address, timeout=T) as c:
        c.send(b"fire and forget")
        c.shutdown("write")
        with pytest.raises(sk.ConnectionClosed):
            c.recv(timeout=T)
    assert seen == [b"fire and forget"]


def test_pair(sk_pair):
    client, server = sk_pair
    client.send_many([b"a", b"b", b"c"])
    assert_frames(server, [b"a", b"b", b"c"], within=2)
    client.close()
    assert_state(server, "CLOSE_WAIT", within=2)
    assert_state(client, "CLOSED")


def test_many_connections(sk_connections):
    conns = sk_connections(5)
    for i, c in enumerate(conns):
        assert c.request(str(i).encode(), timeout=T) == str(i).encode()


def test_connections_to_another_server(sk_server_factory, sk_connections):
    srv = sk_server_factory(lambda m: b"ok")
    [c] = sk_connections(1, srv.address)
    assert c.request(b"?", timeout=T) == b"ok"


def test_proxy_latency(sk_proxy):
    with sk.connect(sk_proxy.address, timeout=T) as c:
        with sk_proxy.fault("latency", ms=30, direction="downstream"):
            assert c.request(b"x", timeout=T) == b"x"
        assert sk_proxy.stats.bytes_upstream == 5  # one frame: header and b"x"


def test_proxy_factory(sk_server_factory, sk_proxy_factory):
    srv = sk_server_factory(lambda m: m[::-1])
    proxy = sk_proxy_factory(srv.address, buffer_size=4096)
    assert sk.call(proxy.address, b"abc", timeout=T) == b"cba"


def test_lab(sk_lab):
    scene = sk_lab.reproduce("CLOSE_WAIT")
    assert_state(scene.sock, "CLOSE_WAIT")


def test_state_of_a_server_port(sk_server):
    c = socket.create_connection(sk_server.address)
    try:
        assert_state(sk_server.address, "ESTABLISHED", within=2)
    finally:
        c.close()
'''


def test_a_user_suite_passes(run) -> None:
    r = run(USER_SUITE, "-v")
    r.assert_outcomes(passed=10)


# ------------------------------------------------------------ leak reports

LEAKY_SUITE = '''
import socket, threading
import pytest

HELD = []
STOP = threading.Event()


def teardown_module():
    STOP.set()
    for s in HELD:
        s.close()


def test_leaks_a_socket(sk_server):
    HELD.append(socket.create_connection(sk_server.address))


def test_leaks_a_thread(sk_pair):
    threading.Thread(target=STOP.wait, name="forgotten-worker", daemon=True).start()


def test_leaks_a_proxy(sk_server):
    from pysockkit.testing.proxy import FaultProxy
    HELD.append(FaultProxy(sk_server.address))


def test_clean(sk_pair, sk_proxy):
    sk_pair[0].send(b"x")
    assert sk_pair[1].recv(timeout=2) == b"x"


@pytest.mark.sk_no_leak_check
def test_opted_out(sk_server):
    HELD.append(socket.create_connection(sk_server.address))


def test_not_checked_without_fixtures():
    HELD.append(socket.socket())


@pytest.mark.sk_leak_check
def test_marked_is_checked():
    HELD.append(socket.socket())
'''


def test_leaks_are_reported_with_details(run) -> None:
    r = run(LEAKY_SUITE, "-o", "sk_leak_grace=0.3")
    r.assert_outcomes(passed=7, errors=4)
    out = r.stdout.str()
    r.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_socket*",
        "*test_leaks_a_socket leaked 1 resource(s)*",
        "*socket fd *: TCP CLOSE_WAIT 127.0.0.1:* -> 127.0.0.1:*",  # server closed its end
    ])
    assert "thread 'forgotten-worker' (daemon=True) is still running" in out
    assert "native thread 'sk-proxy'" in out
    assert "TCP LISTEN 127.0.0.1:" in out  # the leaked proxy's listener
    assert "ERROR at teardown of test_marked_is_checked" in out
    for ok in ("test_clean", "test_opted_out", "test_not_checked_without_fixtures"):
        assert f"ERROR at teardown of {ok}" not in out


def test_leak_check_all_and_off(run) -> None:
    r = run(LEAKY_SUITE, "-o", "sk_leak_grace=0.3", "--sk-leak-check=all")
    r.assert_outcomes(passed=7, errors=5)  # now also the one without fixtures
    r = run(LEAKY_SUITE, "-o", "sk_leak_check=off")
    r.assert_outcomes(passed=7, errors=1)  # an explicit marker still checks
    r.stdout.fnmatch_lines(["*ERROR at teardown of test_marked_is_checked*"])


def test_leak_action_warn(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini(INI.replace("    error\n", "") + "sk_leak_action = warn\nsk_leak_grace = 0.3\n")
    pytester.makepyfile(test_sample=LEAKY_SUITE)
    r = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider",
                           "-W", "default::pysockkit._pytest_plugin.SocketLeakWarning")
    r.assert_outcomes(passed=7, warnings=4)
    r.stdout.fnmatch_lines(["*SocketLeakWarning*leaked*"])


def test_broader_scoped_fixtures_are_not_blamed(run) -> None:
    src = '''
import socket, pytest

@pytest.fixture(scope="module")
def shared_socket():
    s = socket.socket()
    yield s
    s.close()

def test_first(shared_socket, sk_pair):
    pass

def test_second(shared_socket, sk_pair):
    pass
'''
    run(src).assert_outcomes(passed=2)


def test_bad_options_are_usage_errors(run) -> None:
    r = run("def test_x(): pass\n", "-o", "sk_leak_action=explode")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*sk_leak_action must be fail or warn*"])


# ------------------------------------------------------------ faults -> errors

FAULT_SUITE = '''
import socket, struct, time
import pytest
import pysockkit as sk

# the outer suite's time scale (helpers.scaled) for every bound here
T = 2.0 * float(__import__("os").environ.get("PYSOCKKIT_TIME_SCALE") or 1)

F = sk.Framing()


def frame(b):
    return struct.pack(">I", len(b)) + b


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    return buf


@pytest.fixture
def conn(sk_proxy):
    with sk.connect(sk_proxy.address, timeout=T) as c:
        sk_proxy.wait_connections(1)
        yield c


@pytest.fixture
def raw(sk_proxy):
    with socket.create_connection(sk_proxy.address, timeout=T) as s:
        sk_proxy.wait_connections(1)
        yield s


# --- a pysockkit client

def test_stall_is_a_timeout(sk_proxy, conn):
    with sk_proxy.fault("stall", direction="downstream"):
        with pytest.raises(sk.Timeout):
            conn.request(b"x", timeout=0.2)


def test_latency_beyond_the_timeout_loses_nothing(sk_proxy, conn):
    with sk_proxy.fault("latency", ms=300, direction="upstream"):
        conn.send(b"late")
        with pytest.raises(sk.Timeout):
            conn.recv(timeout=0.1)
        assert conn.recv(timeout=T) == b"late"


def test_reset_peer_is_a_connection_reset(sk_proxy, conn):
    sk_proxy.add("reset_peer", direction="downstream")
    with pytest.raises(sk.ConnectionReset):
        conn.request(b"x", timeout=T)


def test_limit_data_mid_frame_is_an_incomplete_frame(sk_proxy, conn):
    sk_proxy.add("limit_data", bytes=6, direction="downstream")
    conn.send(b"0123456789")
    with pytest.raises(sk.IncompleteFrame) as exc:
        conn.recv(timeout=T)
    assert exc.value.missing == 8


def test_limit_data_on_a_boundary_is_connection_closed(sk_proxy, conn):
    sk_proxy.add("limit_data", bytes=4 + 2, direction="downstream")
    assert conn.request(b"ok", timeout=T) == b"ok"
    with pytest.raises(sk.ConnectionClosed):
        conn.recv(timeout=T)


def test_slicer_keeps_frames_intact(sk_proxy, conn):
    msgs = [bytes([i]) * i for i in range(30)]
    with sk_proxy.fault("slicer", average_size=2, size_variation=1, delay_us=20):
        conn.send_many(msgs)
        assert [conn.recv(timeout=T) for _ in msgs] == msgs


def test_bandwidth_slows_but_delivers(sk_proxy, conn):
    with sk_proxy.fault("bandwidth", rate=20_000, direction="downstream"):
        t0 = time.monotonic()
        assert conn.request(bytes(5000), timeout=T) == bytes(5000)
        assert time.monotonic() - t0 >= 0.2


def test_slow_close_delays_the_end(sk_proxy, conn):
    with sk_proxy.fault("slow_close", delay_ms=200, direction="downstream"):
        conn.shutdown("write")   # the echo server closes in turn
        t0 = time.monotonic()
        with pytest.raises(sk.ConnectionClosed):
            conn.recv(timeout=T)
        assert time.monotonic() - t0 >= 0.18


# --- a plain stdlib client

def test_stdlib_stall_is_socket_timeout(sk_proxy, raw):
    with sk_proxy.fault("stall"):
        raw.sendall(frame(b"x"))
        raw.settimeout(0.2)
        with pytest.raises(TimeoutError):
            raw.recv(10)


def test_stdlib_reset_peer_is_connection_reset_error(sk_proxy, raw):
    sk_proxy.add("reset_peer", delay_ms=50, direction="downstream")
    with pytest.raises(ConnectionResetError):
        raw.recv(10)


def test_stdlib_limit_data_is_a_short_read_then_eof(sk_proxy, raw):
    sk_proxy.add("limit_data", bytes=6, direction="downstream")
    raw.sendall(frame(b"0123456789"))
    with pytest.raises(EOFError) as exc:
        recv_exact(raw, 14)
    assert exc.value.args[0] == frame(b"0123456789")[:6]


def data_segs_in(s):
    # struct tcp_info's tcpi_data_segs_in (offset 152): what the kernel received
    return struct.unpack_from("=I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 152)[0]


def test_stdlib_slicer_splits_every_byte(sk_proxy, raw):
    segs = data_segs_in(raw)
    with sk_proxy.fault("slicer", delay_us=1000, direction="downstream"):
        raw.sendall(frame(b"abcdef"))
        chunks = []
        while sum(map(len, chunks)) < 10:
            chunks.append(raw.recv(100))
    assert b"".join(chunks) == frame(b"abcdef")
    assert data_segs_in(raw) - segs == 10  # one byte a segment, however recv() grouped them
'''


def test_faults_give_typed_errors(run) -> None:
    r = run(FAULT_SUITE, "-v")
    r.assert_outcomes(passed=12)


# ------------------------------------------------------------ assertion output


def test_assert_state_failure_lists_transitions(run) -> None:
    src = '''
from pysockkit.testing import assert_state

def test_wait(sk_pair):
    client, server = sk_pair
    server.close()
    assert_state(client, "TIME_WAIT", within=0.3)
'''
    r = run(src)
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([
        "*did not reach TIME_WAIT within 0.3 s; observed:*",
        "*Connection fd * 127.0.0.1:* -> 127.0.0.1:*",
        "* ms  CLOSE_WAIT*",
    ])
    assert "def assert_state" not in r.stdout.str()  # helper frames hidden


def test_assert_frames_failure_shows_the_difference(run) -> None:
    src = '''
from pysockkit.testing import assert_frames

def test_frames(sk_pair):
    client, server = sk_pair
    client.send_many([b"a", b"X", b"c", b"extra"])
    assert_frames(server, [b"a", b"b", b"c"], within=1)
'''
    r = run(src)
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "expected 3 frame(s), received 3:" in out
    assert "[1] != expected b'b', got b'X'" in out
    src2 = '''
from pysockkit.testing import assert_frames

def test_frames(sk_pair):
    client, server = sk_pair
    client.send_many([b"a", b"b", b"more"])
    assert_frames(server, [b"a", b"b"], within=1)
'''
    r = run(src2)
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*then: an extra frame b'more' after the last expected one*"])


def test_assert_frames_reports_how_the_stream_ended(run) -> None:
    src = '''
import socket
from pysockkit.testing import assert_frames

def test_frames(sk_pair):
    client, server = sk_pair
    client.send(b"only one")
    client.close()
    assert_frames(server, [b"only one", b"two"], within=1)

def test_stdlib(sk_server):
    with socket.create_connection(sk_server.address) as s:
        s.sendall(b"\\x00\\x00\\x00\\x02hi")
        assert_frames(s, [b"hi"], within=1)
'''
    r = run(src)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines(["*then: ConnectionClosed:*"])


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("Linux only", allow_module_level=True)
