#!/usr/bin/env python3
"""10,000 heartbeating long connections in one process: reactor CPU and
memory per connection.

    python bench/heartbeat_scale.py [--conns 10000] [--seconds 10] [--interval 1.0]

A server process accepts N clients from a second process; both sides use
sk.Heartbeat(interval, 3 * interval), so every connection beats once per
interval in each direction and nothing else is sent.  The server reports:

- reactor CPU: the hub thread's own CPU time (CLOCK_THREAD_CPUTIME_ID) over
  the measuring window, as % of one core;
- memory per connection: the server's RSS after accepting and beating,
  minus its RSS before the first accept, divided by N.  Kernel socket
  buffers are not in RSS, so this is user-space memory (Python objects, the
  C connection state, the hub's slot and heap entry, allocator overhead).

Both processes raise RLIMIT_NOFILE as needed.  Bounded: each phase has a
deadline; both processes are killed on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pysockkit as sk  # noqa: E402
from pysockkit import _core  # noqa: E402


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def server(n: int, seconds: float, interval: float) -> None:
    _raise_nofile(n)
    hb = sk.Heartbeat(interval, 3 * interval)
    with sk.listen(("127.0.0.1", 0), backlog=4096, heartbeat=hb) as srv:
        print("port", srv.address[1], flush=True)
        rss0 = _rss_kib()
        conns = []
        deadline = time.monotonic() + 120
        while len(conns) < n:
            conns.append(srv.accept(timeout=max(0.1, deadline - time.monotonic())))
        # let every connection beat a few times (buffers come and go)
        time.sleep(3 * interval)
        st0 = _core.hub_stats()
        t0 = time.monotonic()
        time.sleep(seconds)
        st1 = _core.hub_stats()
        dt = time.monotonic() - t0
        rss1 = _rss_kib()
        dead = sum(1 for c in conns if c.heartbeat_stats["peer_dead"])
        alive_latency = sorted(c.latency for c in conns if c.latency is not None)
        res = {
            "conns": n,
            "interval_s": interval,
            "window_s": round(dt, 2),
            "reactor_cpu_pct": round(100 * (st1["cpu_s"] - st0["cpu_s"]) / dt, 2),
            "pings_per_s": round((st1["pings"] - st0["pings"]) / dt),
            "wakeups_per_s": round((st1["wakeups"] - st0["wakeups"]) / dt),
            "bytes_per_conn": round((rss1 - rss0) * 1024 / n),
            "dead": dead,
            "latency_median_us": round(alive_latency[len(alive_latency) // 2] * 1e6, 1) if alive_latency else None,
        }
        print("RESULT", json.dumps(res), flush=True)
        for c in conns:
            c.close()


def client(port: int, n: int, seconds: float, interval: float) -> None:
    _raise_nofile(n)
    hb = sk.Heartbeat(interval, 3 * interval)
    conns = [sk.connect(("127.0.0.1", port), timeout=10, heartbeat=hb) for _ in range(n)]
    print("connected", flush=True)
    sys.stdin.readline()  # until the server is done
    for c in conns:
        c.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--conns", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--role", default="run")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    if a.role == "server":
        server(a.conns, a.seconds, a.interval)
        return 0
    if a.role == "client":
        client(a.port, a.conns, a.seconds, a.interval)
        return 0
    args = ["--conns", str(a.conns), "--seconds", str(a.seconds), "--interval", str(a.interval)]
    srv = subprocess.Popen([sys.executable, __file__, "--role", "server", *args],
                           stdout=subprocess.PIPE, text=True)
    cli = None
    try:
        assert srv.stdout is not None
        port = srv.stdout.readline().split()[1]
        cli = subprocess.Popen([sys.executable, __file__, "--role", "client", "--port", port, *args],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = srv.stdout.readline()
        while line and not line.startswith("RESULT"):
            line = srv.stdout.readline()
        res = json.loads(line.split(" ", 1)[1])
        print(json.dumps(res, indent=2))
        print(f"\n{res['conns']} connections, heartbeat every {res['interval_s']} s: "
              f"reactor CPU {res['reactor_cpu_pct']}% of one core (target < 5%), "
              f"{res['bytes_per_conn']} B of user-space memory per connection (target < 2048), "
              f"{res['dead']} declared dead")
        return 0
    finally:
        for proc in (cli, srv):
            if proc is not None:
                if proc.stdin:
                    proc.stdin.close()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
