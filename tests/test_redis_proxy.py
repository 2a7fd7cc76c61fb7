"""FaultProxy in front of a real outside server: redis-server, driven by
redis-py, every toxic with its measured effect, each set up two ways: with
``proxy.add`` and through toxiproxy's JSON config
(``FaultProxy.from_toxiproxy``), so a suite ported from toxiproxy gets the
same behaviour.

redis-server (Debian's ``redis-server``, installed by tests/run_all.sh) is
started by the fixture on a free loopback port with no persistence, and
stopped by its pid.  Lower time bounds are exact (a fault must really
delay); upper bounds are loose, through helpers.scaled().
"""

from __future__ import annotations

import inspect
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import pysockkit as sk
from helpers import scaled

T = scaled(5.0)
VALUE_1M = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(scope="module")
def redis_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    exe = shutil.which("redis-server")
    assert exe is not None, ("redis-server is not installed: apt-get install redis-server "
                             "(tests/run_all.sh does)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    with socket.socket() as s:  # a free port (the kernel will not reuse it at once)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(workdir / "redis.log", "wb")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "no", "--daemonize", "no"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + T
        while True:
            try:
                with redis.Redis("127.0.0.1", port, socket_timeout=T) as r:
                    if r.ping():
                        break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() >= deadline:
                    raise AssertionError(
                        f"redis-server did not start: {(workdir / 'redis.log').read_text()}")
                time.sleep(0.02)
        with redis.Redis("127.0.0.1", port, socket_timeout=T) as r:
            r.set("big", VALUE_1M)
            r.set("small", b"v")
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(T)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(T)
        log.close()


Make = Callable[..., sk.FaultProxy]


@pytest.fixture(params=["api", "toxiproxy-json"])
def make(request: pytest.FixtureRequest, redis_addr: tuple[str, int]) -> Iterator[Make]:
    """make(type, stream="downstream", **attributes) -> a proxy in front of
    redis with that one toxic, added with proxy.add or read from
    toxiproxy's JSON config."""
    made: list[sk.FaultProxy] = []

    def build(kind: str, stream: str = "downstream", **attributes: Any) -> sk.FaultProxy:
        if request.param == "api":
            proxy = sk.FaultProxy(redis_addr)
            made.append(proxy)
            proxy.add(kind, stream, **attributes)
        else:
            host, port = redis_addr
            config = json.dumps([{
                "name": "redis", "listen": "127.0.0.1:0", "upstream": f"{host}:{port}",
                "enabled": True,
                "toxics": [{"name": f"{kind}_{stream}", "type": kind, "stream": stream,
                            "toxicity": 1.0, "attributes": attributes}],
            }])
            proxy = sk.FaultProxy.from_toxiproxy(config)
            made.append(proxy)
        assert [h.fault.name for h in proxy.faults] == [kind]
        return proxy

    yield build
    for p in made:
        p.close()


def client(proxy: sk.FaultProxy, timeout: float = T) -> redis.Redis:
    host, port = proxy.address
    # no retries: a fault must reach the test, not be retried away
    return redis.Redis(host, port, socket_timeout=timeout, socket_connect_timeout=T,
                       retry=Retry(NoBackoff(), 0))


# A redis-py connection that sends nothing on connect: RESP2 (no HELLO 3)
# and no CLIENT SETINFO (driver_info=None since redis-py 8, lib_name and
# lib_version=None before)
_NO_SETINFO: dict[str, Any] = dict(
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.connection.AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None},
    protocol=2,
)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def test_direct_and_clean_proxy(redis_addr: tuple[str, int]) -> None:
    with sk.FaultProxy(redis_addr) as proxy, client(proxy) as r:
        assert r.get("big") == VALUE_1M
        assert r.get("small") == b"v"


def test_latency(make: Make) -> None:
    """+50 ms downstream on a tiny GET; a 1 MiB GET takes 50 ms + its
    transfer time, not buffer_size / latency rationing (0.8 s before)."""
    proxy = make("latency", latency=50)
    with client(proxy) as r:
        r.ping()  # connect first
        took, v = timed(lambda: r.get("small"))
        assert v == b"v" and took >= 0.05
        took_big, v = timed(lambda: r.get("big"))
        assert v == VALUE_1M
    print(f"GET small {took * 1000:.1f} ms, GET 1 MiB {took_big * 1000:.1f} ms")
    assert took < 0.05 + scaled(0.2)
    assert 0.05 <= took_big < 0.06 + scaled(0.25)


def test_latency_upstream_and_jitter(make: Make) -> None:
    proxy = make("latency", "upstream", latency=40, jitter=10)
    with client(proxy) as r:
        r.ping()
        took, v = timed(lambda: r.get("small"))
    assert v == b"v" and 0.03 <= took < 0.05 + scaled(0.2)


def test_bandwidth(make: Make) -> None:
    """1 MiB at 5000 KB/s: at least 0.21 s, less the first 1 ms quantum
    and the 5 ms an idle sender may earn."""
    proxy = make("bandwidth", rate=5000)
    with client(proxy) as r:
        r.ping()
        took, v = timed(lambda: r.get("big"))
    print(f"GET 1 MiB at 5 MB/s: {took:.3f} s")
    assert v == VALUE_1M
    assert len(VALUE_1M) / 5_000_000 - 0.006 <= took < scaled(0.8)


def test_timeout_drops_then_closes(make: Make) -> None:
    proxy = make("timeout", timeout=200)
    t0 = time.monotonic()
    with client(proxy) as r:
        with pytest.raises(redis.exceptions.ConnectionError):
            r.get("small")  # the reply is dropped; the proxy closes at 200 ms
    assert 0.195 <= time.monotonic() - t0 < scaled(2.0)


def test_timeout_zero_holds_forever(make: Make) -> None:
    proxy = make("timeout", timeout=0)
    with client(proxy, timeout=0.3) as r:
        with pytest.raises(redis.exceptions.TimeoutError):
            r.get("small")
    assert proxy.stats.stall_closes == 0


def test_reset_peer(make: Make) -> None:
    """An idle connection is not reset; 100 ms after the first reply data
    the client gets RST (and never the reply)."""
    proxy = make("reset_peer", timeout=100)
    host, port = proxy.address
    # no CLIENT SETINFO on connect: the connection stays idle until the GET
    conn = redis.Connection(host=host, port=port, socket_timeout=T, retry=Retry(NoBackoff(), 0),
                            **_NO_SETINFO)
    try:
        conn.connect()
        time.sleep(0.2)  # connected and idle: no reset yet
        assert proxy.stats.resets == 0
        t0 = time.monotonic()
        conn.send_command("GET", "small")
        with pytest.raises(redis.exceptions.ConnectionError, match="reset|closed"):
            conn.read_response()
        took = time.monotonic() - t0
    finally:
        conn.disconnect()
    assert 0.095 <= took < scaled(2.0)
    assert proxy.stats.resets == 1


def test_slow_close(make: Make) -> None:
    """redis-server closes after QUIT; its FIN reaches the client 300 ms
    after the +OK."""
    proxy = make("slow_close", delay=300)
    with socket.create_connection(proxy.address, timeout=T) as s:
        t0 = time.monotonic()  # before the +OK: the FIN comes 300 ms after it
        s.sendall(b"QUIT\r\n")
        assert s.recv(100) == b"+OK\r\n"
        assert s.recv(100) == b""
        took = time.monotonic() - t0
    assert 0.3 <= took < scaled(2.0)


def test_slicer(make: Make) -> None:
    """A 1 MiB reply cut into ~1000-byte slices 20 us apart: intact, and at
    least (slices - 1) x 20 us late."""
    proxy = make("slicer", average_size=1000, size_variation=500, delay=20)
    with client(proxy) as r:
        r.ping()
        took, v = timed(lambda: r.get("big"))
    assert v == VALUE_1M
    slices = len(VALUE_1M) / 1500  # at most 1500 bytes each
    assert slices * 20e-6 * 0.99 <= took < scaled(2.0)


def test_limit_data(make: Make) -> None:
    proxy = make("limit_data", bytes=1000)
    with client(proxy) as r:
        assert r.get("small") == b"v"
        with pytest.raises(redis.exceptions.ConnectionError):
            r.get("big")  # cut after 1000 bytes: the server closed mid-reply
    assert proxy.stats.limits == 1


def test_stall_then_remove(make: Make) -> None:
    proxy = make("stall")
    with client(proxy, timeout=0.3) as r:
        with pytest.raises(redis.exceptions.TimeoutError):
            r.get("small")
    proxy.clear()
    with client(proxy) as r:
        assert r.get("small") == b"v"


def test_toxicity_zero_spares_everyone(redis_addr: tuple[str, int]) -> None:
    with sk.FaultProxy(redis_addr) as proxy:
        proxy.add("timeout", toxicity=0.0)
        with client(proxy) as r:
            assert r.get("small") == b"v"
