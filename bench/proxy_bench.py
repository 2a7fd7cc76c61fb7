#!/usr/bin/env python3
"""The FaultProxy's own latency, with no fault switched on.

    python bench/proxy_bench.py [-n 20000] [--blocks 20] [--size 16]
                                [--repeat 5] [--wait-quiet 300]
                                [--out bench/RESULTS-proxy.md]

A ping-pong over loopback between this process (the client) and a child
process (an echo server with one thread per connection), once straight to
the server and once through a FaultProxy living in this process (its C
reactor thread; the GIL is not involved).  Every message carries the
CLOCK_MONOTONIC time it was sent (both processes read the same clock), so
each exchange gives three numbers:

- upstream one-way: server receive time - client send time;
- downstream one-way: client receive time - server send time;
- round trip: client receive time - client send time.

The two paths are measured in alternating blocks (direct, proxied,
proxied, direct, ...), so drift of a busy machine hits both alike.  The
proxy's added latency per direction is the proxied figure minus the direct
one (median and p99).  With --repeat, each repeat is a fresh server, proxy
and pair of connections; the report gives the median over the repeats and
the range of the added median.  Both paths pay the same Python and thread wake-up
costs, which cancel in the difference; the difference is what a test pays
for putting a FaultProxy between its client and server.

Target: under 20 us added per direction (median).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing as mp
import os
import platform
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pysockkit  # noqa: E402
from pysockkit.testing import FaultProxy  # noqa: E402

HDR = struct.Struct("<qq")  # seq, send time (ns, CLOCK_MONOTONIC)
TARGET_US = 20.0


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _recv_exact(s: socket.socket, buf: memoryview) -> bool:
    got = 0
    while got < len(buf):
        n = s.recv_into(buf[got:])
        if n == 0:
            return False
        got += n
    return True


def _nodelay(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ------------------------------------------------------------------ server


def _serve_conn(s: socket.socket, size: int, out: dict[int, int]) -> None:
    buf = bytearray(size)
    view = memoryview(buf)
    reply = bytearray(size)
    while _recv_exact(s, view):
        t = _now()
        seq, sent = HDR.unpack_from(buf)
        out[seq] = t - sent
        HDR.pack_into(reply, 0, seq, _now())
        s.sendall(reply)
    s.close()


def server_main(pipe: Any, size: int, conns: int) -> None:
    ls = socket.create_server(("127.0.0.1", 0))
    pipe.send(ls.getsockname()[1])
    ups: dict[int, int] = {}
    threads = []
    for _ in range(conns):
        s, _ = ls.accept()
        _nodelay(s)
        t = threading.Thread(target=_serve_conn, args=(s, size, ups))
        t.start()
        threads.append(t)
    ls.close()
    for t in threads:
        t.join()
    pipe.send(ups)


# ------------------------------------------------------------------ client


def _exchange(s: socket.socket, seq: int, msg: bytearray, view: memoryview) -> tuple[int, int]:
    t0 = _now()
    HDR.pack_into(msg, 0, seq, t0)
    s.sendall(msg)
    _recv_exact(s, view)
    t1 = _now()
    _, sent = HDR.unpack_from(view)
    return t1 - t0, t1 - sent  # rtt, downstream one-way


def _pct(xs: list[int], p: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k] / 1000.0


def _busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy (not idle/iowait) over `seconds`."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def _wait_quiet(limit: float, threshold: float = 0.10) -> float:
    """Wait up to `limit` s until other work uses under `threshold` of the
    CPUs; returns the last measured busy share."""
    deadline = time.monotonic() + limit
    busy = _busy_fraction()
    while busy >= threshold and time.monotonic() < deadline:
        busy = _busy_fraction()
    return busy


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def run(n: int, blocks: int, size: int, warmup: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    srv = ctx.Process(target=server_main, args=(child, size, 2), daemon=True)
    srv.start()
    port = parent.recv()
    msg = bytearray(size)
    rbuf = bytearray(size)
    view = memoryview(rbuf)

    direct = socket.create_connection(("127.0.0.1", port))
    _nodelay(direct)
    _exchange(direct, -1, msg, view)  # accepted first: the server's conn 0
    proxy = FaultProxy(("127.0.0.1", port))
    via = socket.create_connection(proxy.address)
    _nodelay(via)
    proxy.wait_connections(1)
    paths = {"direct": direct, "proxied": via}
    rtt: dict[str, list[int]] = {"direct": [], "proxied": []}
    down: dict[str, list[int]] = {"direct": [], "proxied": []}
    seqs: dict[str, list[int]] = {"direct": [], "proxied": []}
    seq = 0
    for name, s in paths.items():  # warm up both paths (not recorded)
        for _ in range(warmup):
            seq += 1
            _exchange(s, -seq, msg, view)
    per_block = max(1, n // blocks)
    load_before = _load()
    t_start = time.monotonic()
    for b in range(blocks):
        order = ("direct", "proxied") if b % 2 == 0 else ("proxied", "direct")
        for name in order:
            s = paths[name]
            for _ in range(per_block):
                seq += 1
                r, d = _exchange(s, seq, msg, view)
                rtt[name].append(r)
                down[name].append(d)
                seqs[name].append(seq)
    elapsed = time.monotonic() - t_start
    direct.close()
    via.close()
    ups: dict[int, int] = parent.recv()
    srv.join(10)
    stats = proxy.stats
    proxy.close()
    up = {k: [ups[q] for q in v if q in ups] for k, v in seqs.items()}
    return {
        "up": up,
        "down": down,
        "rtt": rtt,
        "per_path": per_block * blocks,
        "elapsed": elapsed,
        "load_before": load_before,
        "load_after": _load(),
        "proxy_bytes": (stats.bytes_upstream, stats.bytes_downstream),
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per metric and statistic, the values over the repeats."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in ("up", "down", "rtt"):
        st: dict[str, list[float]] = {k: [] for k in ("dm", "d99", "pm", "p99", "am", "a99")}
        for res in results:
            d, p = res[key]["direct"], res[key]["proxied"]
            dm, d99, pm, p99 = _pct(d, 50), _pct(d, 99), _pct(p, 50), _pct(p, 99)
            for k, v in (("dm", dm), ("d99", d99), ("pm", pm), ("p99", p99),
                         ("am", pm - dm), ("a99", p99 - d99)):
                st[k].append(v)
        out[key] = st
    return out


def _med(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def report(results: list[dict[str, Any]], args: argparse.Namespace, busy: float) -> str:
    summ = _summary(results)
    rows = []
    for key, label in (("up", "upstream (client → server), one way"),
                       ("down", "downstream (server → client), one way"),
                       ("rtt", "round trip")):
        st = summ[key]
        rng = f"{min(st['am']):+.1f} … {max(st['am']):+.1f}"
        rows.append(f"| {label} | {_med(st['dm']):.1f} | {_med(st['d99']):.1f} | "
                    f"{_med(st['pm']):.1f} | {_med(st['p99']):.1f} | "
                    f"**{_med(st['am']):+.1f}** | {rng} | {_med(st['a99']):+.1f} |")
    up_added = _med(summ["up"]["am"])
    down_added = _med(summ["down"]["am"])
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    n_per = results[0]["per_path"]
    loads = ", ".join(f"{r['load_before']}" for r in results)
    quiet = "" if busy < 0.10 else " — **the machine was busy; rerun on a quiet machine**"
    lines = [
        "# FaultProxy: added latency with no fault",
        "",
        f"- date: {now}",
        f"- kernel: {platform.system()} {platform.release()} ({platform.machine()})",
        f"- CPU: {cpu}, {os.cpu_count()} CPUs",
        f"- Python: {platform.python_implementation()} {platform.python_version()}; "
        f"pysockkit {pysockkit.__version__} from {Path(pysockkit.__file__).parent}",
        f"- other work on the machine just before the run: {busy * 100:.0f}% of the CPUs"
        f"{quiet}; load average (1 min) at each repeat: {loads}",
        f"- command: `python bench/proxy_bench.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- {len(results)} repeat(s) × {n_per} exchanges of {args.size}-byte messages per "
        f"path, in {args.blocks} alternating blocks, after {args.warmup} warm-up "
        f"exchanges each",
        "",
        "Client (this process, stdlib sockets, TCP_NODELAY) ↔ echo server (a child "
        "process, one thread per connection), straight or through a `FaultProxy` in the "
        "client's process.  Times in µs from CLOCK_MONOTONIC stamps carried in the "
        "messages; each cell is the median over the repeats of that statistic.  "
        "*Added* = proxied − direct; its range is over the repeats.",
        "",
        "| path | direct median | direct p99 | proxied median | proxied p99 "
        "| added median | added median, range | added p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Target: under {TARGET_US:.0f} µs added per direction (median): "
        f"upstream {'met' if up_added < TARGET_US else 'NOT met'} ({up_added:.1f} µs), "
        f"downstream {'met' if down_added < TARGET_US else 'NOT met'} "
        f"({down_added:.1f} µs).",
        "",
        "What the added time is: per direction the proxy's thread wakes from "
        "`epoll_pwait2`, makes one `readv` and one `sendmsg`, and sleeps again; "
        "no copy beyond the kernel's, no allocation, no lock on the data path.  The "
        "wake-up of a sleeping thread dominates, so the figure follows the machine: "
        "on this 2-CPU VM the proxy's thread competes with both ends of the ping-pong "
        "and with whatever else runs, and other work inflates it (and the p99) "
        "several-fold.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="measured exchanges per path")
    ap.add_argument("--blocks", type=int, default=20, help="alternating blocks")
    ap.add_argument("--size", type=int, default=16, help="message size in bytes (>= 16)")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5, help="fresh runs, summarised by median")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds until other work uses < 10%% of the CPUs")
    ap.add_argument("--out", help="also write the report (markdown) to this file")
    args = ap.parse_args()
    if args.size < HDR.size:
        ap.error(f"--size must be at least {HDR.size}")
    busy = _wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else _busy_fraction()
    results = [run(args.n, args.blocks, args.size, args.warmup) for _ in range(args.repeat)]
    text = report(results, args, busy)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
