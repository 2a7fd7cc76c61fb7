"""Keepalive behaviour, not only option values: a peer that stops answering.

docs/heartbeat.md promises: with ``sk.Keepalive(idle, interval, count)``
the kernel probes an idle connection and resets it after ``count``
unanswered probes, about ``idle + interval * count`` seconds after the last
packet from the peer; keepalive does nothing while data is unacknowledged,
and ``user_timeout`` (TCP_USER_TIMEOUT) covers that case: the kernel aborts
when sent data stays unacknowledged that long.

Each scenario runs in a child process in a private network namespace
(``unshare -Urn``, as pysockkit.lab does), where the test may drop every
packet on loopback with an nftables rule: the peer's process and socket
stay alive, but nothing it sends arrives and nothing reaches it, which is a
cut link.  nft comes from the nftables package (tests/run_all.sh installs
it).  The child reports what pysockkit raised and when, as JSON.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys

from helpers import child_env, scaled


CHILD = r"""
import errno, json, subprocess, sys, threading, time
import pysockkit as sk

def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)

def cut():
    # drop every packet on loopback, both ways: the input hook sees them all
    sh("nft", "add table inet cut; "
              "add chain inet cut input { type filter hook input priority 0; policy drop; }")

def pair(ka):
    cli = sk.connect(srv.address, timeout=5, keepalive=ka)
    peer = srv.accept(timeout=5)
    cli.send(b"hi", timeout=5)
    assert peer.recv(timeout=5) == b"hi"
    peer.send(b"hello", timeout=5)
    assert cli.recv(timeout=5) == b"hello"
    return cli, peer

def outcome(call):
    t0 = time.monotonic()
    try:
        call()
        return {"raised": None, "after": time.monotonic() - t0}
    except BaseException as exc:
        return {"raised": type(exc).__name__, "errno": getattr(exc, "errno", None),
                "message": str(exc), "after": time.monotonic() - t0,
                "is_timeout_error": isinstance(exc, TimeoutError)}

def timer_of(conn):
    # the kernel's own view (sock_diag): which timer runs on this socket
    port = conn.local_address[1]
    return [e.timer for e in sk.sockets(port=port) if e.local[1] == port]

sh("ip", "link", "set", "lo", "up")
srv = sk.listen(("127.0.0.1", 0))
case = sys.argv[1]
res = {}
if case == "keepalive":
    idle, interval, count = (int(x) for x in sys.argv[2:5])
    quiet = float(sys.argv[5])
    cli, peer = pair(sk.Keepalive(idle=idle, interval=interval, count=count))
    res["timer"] = timer_of(cli)
    # a live peer answers the probes: no false alarm on a quiet connection
    time.sleep(quiet)
    res["quiet"] = outcome(lambda: cli.send(b"still there?", timeout=5))
    res["quiet_echo"] = peer.recv(timeout=5).decode()
    peer.send(b"yes", timeout=5)
    assert cli.recv(timeout=5) == b"yes"  # the last packet from the peer
    cut()
    res["blocked_recv"] = outcome(lambda: cli.recv())
    res["next_send"] = outcome(lambda: cli.send(b"x", timeout=5))
    res["next_recv"] = outcome(lambda: cli.recv(timeout=5))
    res["state"] = cli.state.name
elif case == "user_timeout":
    uto, idle, interval, count = float(sys.argv[2]), *(int(x) for x in sys.argv[3:6])
    watch = float(sys.argv[6])
    a, pa = pair(sk.Keepalive(idle=idle, interval=interval, count=count))
    b, pb = pair(sk.Keepalive(user_timeout=uto))
    cut()
    # data in flight on both: it stays unacknowledged
    a.send(b"x" * 1000, timeout=5)
    b.send(b"x" * 1000, timeout=5)
    out = {}
    t = threading.Thread(target=lambda: out.update(a=outcome(lambda: a.recv(timeout=watch))))
    t.start()
    res["user_timeout"] = outcome(lambda: b.recv())
    t.join(watch + 30)
    res["keepalive_only"] = out["a"]
    res["next_send"] = outcome(lambda: b.send(b"x", timeout=5))
print(json.dumps(res), flush=True)
"""


def run_child(*args: str, timeout: float) -> dict:
    exe = shutil.which("unshare")
    assert exe is not None, "unshare (util-linux) is needed: tests/run_all.sh installs it"
    assert shutil.which("nft") is not None, "nft is needed: apt-get install nftables"
    r = subprocess.run([exe, "-Urn", sys.executable, "-c", CHILD, *args],
                       capture_output=True, text=True, timeout=timeout, env=child_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_dead_by_kernel(o: dict) -> None:
    """What pysockkit raises when the kernel gave up on the peer: sk.Error
    with errno ETIMEDOUT, naming the syscall; not sk.Timeout (whose promise
    is "nothing lost, the connection is usable"), and not a TimeoutError,
    so code that retries on timeouts does not retry a dead connection."""
    assert o["raised"] == "Error", o
    assert o["errno"] == errno.ETIMEDOUT, o
    assert o["is_timeout_error"] is False, o
    assert o["message"].startswith("[Errno 110] recv: "), o
    assert "the kernel gave up on the peer" in o["message"], o
    assert "open a new one" in o["message"], o


def test_keepalive_resets_a_connection_whose_peer_stopped_answering() -> None:
    idle, interval, count = 1, 1, 2
    res = run_child("keepalive", str(idle), str(interval), str(count),
                    str(idle + interval * count + 1), timeout=scaled(60))
    # the kernel runs the keepalive timer on the socket (sock_diag's view)
    assert res["timer"] == ["keepalive"], res
    # quiet for longer than idle + interval * count: the peer's kernel
    # answered every probe, nothing was reset
    assert res["quiet"]["raised"] is None and res["quiet_echo"] == "still there?", res
    # cut: a recv blocked with no timeout ends after about
    # idle + interval * count (3 s here) since the peer's last packet
    o = res["blocked_recv"]
    assert_dead_by_kernel(o)
    expected = idle + interval * count
    assert expected - 0.5 <= o["after"] <= scaled(expected + 3), o
    # and the connection is dead for good
    assert res["next_send"]["raised"] == "ConnectionReset", res
    assert res["next_send"]["errno"] == errno.EPIPE, res
    assert res["next_recv"]["raised"] == "Error", res
    assert res["next_recv"]["errno"] == errno.ETIMEDOUT, res
    assert res["state"] == "CLOSED", res


def test_user_timeout_aborts_when_sent_data_stays_unacknowledged() -> None:
    uto = 1.5
    idle, interval, count = 1, 1, 2
    watch = idle + interval * count + 1.5  # keepalive would have fired by now if idle
    res = run_child("user_timeout", str(uto), str(idle), str(interval), str(count),
                    str(watch), timeout=scaled(60))
    o = res["user_timeout"]
    assert_dead_by_kernel(o)
    assert uto - 0.05 <= o["after"] <= scaled(uto + 3), o
    assert res["next_send"]["raised"] == "ConnectionReset", res
    # the same cut with keepalive only: data in flight, so keepalive stays
    # silent (docs/heartbeat.md) and the connection is not reset; the
    # bounded recv simply times out
    a = res["keepalive_only"]
    assert a["raised"] == "Timeout", a
    assert a["after"] >= watch - 0.05, a

