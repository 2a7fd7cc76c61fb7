#!/usr/bin/env python3
"""Load and leak figures of issue 7 (docs/reliability.md).

    python bench/load.py [--short 100000] [--serve-short 20000] [--long 10000]
                         [--idle 10000] [--only short,serve,long,idle]

- short: N short connections (sk.call: connect, one exchange, close) in a
  loop against a one-thread pysockkit server in this process: rate, and
  descriptors / threads / allocated blocks / C heap / RSS before and after;
- serve: N short connections against sk.serve (a thread per client) in a
  child process: rate, and the server's descriptors / threads / RSS after;
- long: N concurrent long connections (the server side in a child process
  holding them), one exchange each: time to open, memory per open
  connection on both sides, what is left after closing all;
- idle: N connections that connect and send nothing against sk.serve in a
  child process, while a well-behaved client makes requests on a long
  connection: how many the server accepted over time, how the
  well-behaved client fared, and whether the server drains when they close.

Every phase is bounded (timeouts, counts); every child process is stopped.
Loopback only.  Short connections leave TIME_WAIT sockets on the client
side (60 s); Linux reuses them for new loopback connections
(net.ipv4.tcp_tw_reuse = 2, the default).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pysockkit as sk  # noqa: E402
from hardening import (  # noqa: E402
    ChildServer,
    c_heap_bytes,
    open_fds,
    raise_nofile,
    rss_kib,
    settle,
    threads,
)

STEP = 10.0


def snap() -> dict[str, int]:
    settle()
    return {"fds": open_fds(), "threads": threads(), "blocks": sys.getallocatedblocks(),
            "heap_bytes": c_heap_bytes(), "rss_kib": rss_kib()}


def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a[k] for k in a}


def time_wait() -> int:
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                n += sum(1 for line in f if line.split()[3:4] == ["06"])
        except OSError:
            pass
    return n


def phase_short(n: int) -> None:
    lst = sk.listen(("127.0.0.1", 0), backlog=1024)
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn = lst.accept(timeout=0.1)
            except sk.Timeout:
                continue
            except sk.Error:
                return
            with conn:
                try:
                    conn.send(conn.recv(timeout=STEP), timeout=STEP)
                    conn.recv(timeout=STEP)
                except sk.ConnectionClosed:
                    pass
                except sk.Error as exc:
                    errors.append(exc)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        for _ in range(1000):
            sk.call(lst.address, b"warm", timeout=STEP)
        before = snap()
        t0 = time.monotonic()
        for i in range(n):
            msg = b"short %d" % i
            assert sk.call(lst.address, msg, timeout=STEP) == msg
        dt = time.monotonic() - t0
        time.sleep(0.1)
        after = snap()
    finally:
        stop.set()
        t.join(STEP)
        lst.close()
    print(f"## short: {n} short connections (sk.call) against a one-thread pysockkit server\n")
    print(f"- {dt:.1f} s, {n / dt:.0f} connections/s; errors: {len(errors)}")
    print(f"- before: {before}")
    print(f"- after:  {after}")
    print(f"- growth: {diff(before, after)}")
    print(f"- TIME_WAIT sockets now: {time_wait()}\n")


def phase_serve(n: int) -> None:
    with ChildServer(max_frame=1 << 20) as srv:
        for _ in range(500):
            sk.call(srv.address, b"warm", timeout=STEP)
        base = srv.wait_for(lambda s: s["conns"] == 0, trim=True)
        t0 = time.monotonic()
        for i in range(n):
            msg = b"serve %d" % i
            assert sk.call(srv.address, msg, timeout=STEP) == msg
        dt = time.monotonic() - t0
        after = srv.wait_for(lambda s: s["conns"] == 0 and s["threads"] == base["threads"], trim=True)
    keys = ("rss_kib", "fds", "threads", "conns", "served", "errors")
    print(f"## serve: {n} short connections against sk.serve (child process)\n")
    print(f"- {dt:.1f} s, {n / dt:.0f} connections/s")
    print(f"- server before: {({k: base[k] for k in keys})}")
    print(f"- server after:  {({k: after[k] for k in keys})}\n")


def phase_long(n: int) -> None:
    have = raise_nofile(n + 200)
    if have < n + 200:
        print(f"## long: skipped, RLIMIT_NOFILE {have} < {n + 200}\n")
        return
    with ChildServer(max_frame=1 << 20, mode="hold") as srv:
        warm = [sk.connect(srv.address, timeout=STEP) for _ in range(200)]
        for c in warm:
            c.request(b"warm", timeout=STEP)
            c.close()
        del warm
        srv_base = srv.release()
        before = snap()
        conns = []
        t0 = time.monotonic()
        try:
            for i in range(n):
                c = sk.connect(srv.address, timeout=STEP)
                conns.append(c)
                assert c.request(b"long %d" % i, timeout=STEP) == b"long %d" % i
            t_open = time.monotonic() - t0
            peak_srv = srv.stats()
            peak = snap()
        finally:
            for c in conns:
                c.close()
        del conns
        srv_after = srv.release()
        after = snap()
    print(f"## long: {n} concurrent long connections (server side in a child process)\n")
    print(f"- opened and exchanged in {t_open:.1f} s")
    print(f"- client per open connection: RSS {(peak['rss_kib'] - before['rss_kib']) / n:.1f} KiB, "
          f"C heap {(peak['heap_bytes'] - before['heap_bytes']) / n / 1024:.1f} KiB, "
          f"{(peak['blocks'] - before['blocks']) / n:.1f} Python blocks")
    print(f"- server per open connection: RSS {(peak_srv['rss_kib'] - srv_base['rss_kib']) / n:.1f} KiB")
    print(f"- client growth after closing all: {diff(before, after)}")
    print(f"- server after closing all: rss {srv_after['rss_kib'] - srv_base['rss_kib']:+d} KiB, "
          f"fds {srv_after['fds'] - srv_base['fds']:+d}, conns {srv_after['conns']}, errors {srv_after['errors']}\n")


def phase_idle(n: int) -> None:
    raise_nofile(n + 200)
    with ChildServer(max_frame=1 << 20, max_seconds=300) as srv:
        base = srv.stats()
        good = sk.connect(srv.address, timeout=STEP)
        assert good.request(b"hello", timeout=STEP) == b"hello"
        lat: list[float] = []
        fails: list[str] = []
        stop = threading.Event()

        def well_behaved() -> None:
            i = 0
            while not stop.is_set():
                t = time.monotonic()
                try:
                    assert good.request(b"good %d" % i, timeout=5.0) == b"good %d" % i
                    lat.append(time.monotonic() - t)
                except Exception as exc:
                    fails.append(f"{time.monotonic() - t0:.1f}s {type(exc).__name__}")
                    if len(fails) > 20:
                        return
                i += 1
                stop.wait(0.01)

        t0 = time.monotonic()
        th = threading.Thread(target=well_behaved, daemon=True)
        th.start()
        peers = []
        progress = []
        try:
            for i in range(n):
                peers.append(socket.create_connection(srv.address, timeout=STEP))
            t_conn = time.monotonic() - t0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = srv.stats()
                progress.append((round(time.monotonic() - t0, 1), st["conns"] - base["conns"] - 1))
                if st["conns"] >= base["conns"] + n + 1:
                    break
                time.sleep(2.0)
            peak = srv.stats()
        finally:
            for p in peers:
                p.close()
        t1 = time.monotonic()
        drained = srv.wait_for(lambda s: s["conns"] <= base["conns"] + 1, timeout=60)
        t_drain = time.monotonic() - t1
        stop.set()
        th.join(STEP)
        good.close()
    lat.sort()
    print(f"## idle: {n} connections that send nothing, against sk.serve (child process)\n")
    print(f"- connected (kernel backlog) in {t_conn:.1f} s; accepted by the server over time (s, conns): {progress}")
    print(f"- server at the end: conns {peak['conns']}, threads {peak['threads']}, RSS {peak['rss_kib']} KiB "
          f"(+{(peak['rss_kib'] - base['rss_kib']) / max(1, peak['conns'] - base['conns']):.1f} KiB per connection)")
    print(f"- after they closed: {drained['conns']} conns left after {t_drain:.1f} s")
    if lat:
        print(f"- well-behaved client: {len(lat)} requests served, p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
              f"max {lat[-1] * 1e3:.0f} ms; failures: {len(fails)} {fails[:5]}\n")
    else:
        print(f"- well-behaved client: no request served; failures {fails[:5]}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=100_000)
    p.add_argument("--serve-short", type=int, default=20_000)
    p.add_argument("--long", type=int, default=10_000)
    p.add_argument("--idle", type=int, default=10_000)
    p.add_argument("--only", default="short,serve,long,idle")
    a = p.parse_args()
    only = set(a.only.split(","))
    print(f"# bench/load.py — {time.strftime('%Y-%m-%d %H:%M')}, Linux {os.uname().release}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    if "short" in only:
        phase_short(a.short)
    if "serve" in only:
        phase_serve(a.serve_short)
    if "long" in only:
        phase_long(a.long)
    if "idle" in only:
        phase_idle(a.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
