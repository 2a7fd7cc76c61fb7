#!/usr/bin/env python3
"""Threaded asynchronous duplex: pipelined request/reply, 64-byte messages,
100 requests in flight, client and server in two processes pinned to the two
CPUs.  pysockkit (request_async futures, C receive worker; the server answers
with recv_many/send_many) against pyzmq DEALER/ROUTER (the same pipelining,
the server answering each message: pyzmq has no batched receive or send).
Median of 5 trials, min/max, ratio, and the CPU time each side spent per
request (client: the measured loop, all threads; server: the whole trial),
so a reader can see which side bounds each contender.

    python bench/duplex_bench.py [--requests 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INFLIGHT = 100
MSG = b"m" * 64


def sk_server() -> None:
    os.sched_setaffinity(0, {0})
    sys.path.insert(0, ROOT)
    import pysockkit as sk

    with sk.listen(("127.0.0.1", 0), framing=sk.Framing(correlation=True)) as srv:
        print(srv.address[1], flush=True)
        with srv.accept(timeout=30) as conn:
            try:
                while True:
                    batch = conn.recv_many(timeout=30)
                    conn.send_many([(rid | (1 << 63), msg) for rid, msg in batch])
            except sk.Error:
                pass


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sk_client(port: int, n: int) -> tuple[float, float]:
    os.sched_setaffinity(0, {1})
    sys.path.insert(0, ROOT)
    import pysockkit as sk

    with sk.connect(("127.0.0.1", port), timeout=10, framing=sk.Framing(correlation=True)) as conn:
        d = conn.start_receiver()
        q: deque = deque()
        for _ in range(1000):  # warm-up
            q.append(d.request_async(MSG))
            if len(q) >= INFLIGHT:
                q.popleft().result()
        while q:
            q.popleft().result()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            q.append(d.request_async(MSG))
            if len(q) >= INFLIGHT:
                assert q.popleft().result() == MSG
        while q:
            assert q.popleft().result() == MSG
        return n / (time.perf_counter() - t0), time.process_time() - c0


def zmq_server() -> None:
    import zmq

    os.sched_setaffinity(0, {0})
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    s.setsockopt(zmq.RCVTIMEO, 30000)
    try:
        while True:
            ident, msg = s.recv_multipart()
            s.send_multipart([ident, msg])
    except zmq.Again:
        pass
    s.close(0)
    ctx.term()


def zmq_client(port: int, n: int) -> tuple[float, float]:
    import zmq

    os.sched_setaffinity(0, {1})
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(f"tcp://127.0.0.1:{port}")
    out = 0
    for _ in range(1000):
        s.send(MSG)
    for _ in range(1000):
        s.recv()
    c0, t0 = time.process_time(), time.perf_counter()
    sent = recvd = 0
    while recvd < n:
        while sent < n and sent - recvd < INFLIGHT:
            s.send(MSG)
            sent += 1
        assert s.recv() == MSG
        recvd += 1
    rate = n / (time.perf_counter() - t0)
    cpu = time.process_time() - c0
    s.close(0)
    ctx.term()
    del out
    return rate, cpu


def trial(kind: str, n: int) -> tuple[float, float, float]:
    """(requests/s, client CPU s in the measured loop, server CPU s)."""
    srv = subprocess.Popen([sys.executable, __file__, "--role", f"{kind}-server"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None
        port = srv.stdout.readline().strip()
        s0 = _cpu_s(srv.pid)
        out = subprocess.run([sys.executable, __file__, "--role", f"{kind}-client", "--port", port,
                              "--requests", str(n)], capture_output=True, text=True, timeout=300)
        s1 = _cpu_s(srv.pid)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        rate, ccpu = (float(x) for x in out.stdout.split()[-2:])
        return rate, ccpu, s1 - s0
    finally:
        srv.kill()
        srv.communicate()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="run")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if a.role == "sk-server":
        sk_server()
        return 0
    if a.role == "zmq-server":
        zmq_server()
        return 0
    if a.role == "sk-client":
        print(*sk_client(a.port, a.requests))
        return 0
    if a.role == "zmq-client":
        print(*zmq_client(a.port, a.requests))
        return 0
    res: dict[str, list[tuple[float, float, float]]] = {"sk": [], "zmq": []}
    for _ in range(a.repeat):  # interleaved, so drift hits both alike
        for kind in ("sk", "zmq"):
            res[kind].append(trial(kind, a.requests))
    print(f"pipelined request/reply, 64 B, {INFLIGHT} in flight, {a.requests} requests x {a.repeat}")
    print("| contender | median req/s | min | max | x pyzmq | client CPU us/req | server CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    zmed = statistics.median(r for r, _, _ in res["zmq"])
    for kind, label in (("sk", "pysockkit threaded duplex (request_async)"),
                        ("zmq", "pyzmq DEALER/ROUTER")):
        v = [r for r, _, _ in res[kind]]
        ccpu = statistics.median(c for _, c, _ in res[kind]) / a.requests * 1e6
        scpu = statistics.median(s for _, _, s in res[kind]) / (a.requests + 1000) * 1e6
        print(f"| {label} | {statistics.median(v):,.0f} | {min(v):,.0f} | {max(v):,.0f} | "
              f"{statistics.median(v) / zmed:.2f} | {ccpu:.2f} | {scpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
