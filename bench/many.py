#!/usr/bin/env python3
"""Many connections against one server process (issue 13 item 6).

    python bench/many.py [--quick] [--conns 1,100,1000,10000] [--repeat 3]
                         [--only c,uvloop,...] [--out bench/RESULTS-many.md]

A C load generator (bench/loadgen.c, epoll) opens N loopback connections and
keeps one 64-byte framed request in flight on each, checking every reply in
full, against one echo server at a time: the C epoll server
(bench/echo_epoll.c, the limit line), uvloop streams, asyncio streams, stdlib
socketserver.ThreadingTCPServer, pysockkit.aio.serve, sk.serve,
sk.serve(workers=0) (the handler on the reactor's thread) and
sk.serve(processes=2) (a line says so when that API does not exist yet).  The
servers are in bench/many_servers.py.  Each trial starts a fresh server
pinned to CPU 0 (taskset -c 0) and the load generator pinned to CPU 1; after
a warm-up it measures a fixed window: requests/s, p50/p99 round trip, the
server's CPU time per request (utime+stime from /proc/<pid>/stat over the
window, the server's process tree) and its thread count.  A second phase
holds N idle connections (one exchange each, then nothing) and reads the
server's VmRSS: RSS per connection = (VmRSS holding - VmRSS before) / N.
Contenders are interleaved (each repeat runs them all in turn); the report
gives the median of the repeats with min and max.

Every listen backlog is --backlog (default 4096, the kernel's somaxconn cap).
RLIMIT_NOFILE is raised to its hard limit, which must exceed the largest N
plus a few.  Loopback only; every process has a deadline and is killed by
its pid.

PYSOCKKIT_BENCH_SMOKE=1 (bench/README.md's smoke step) turns any command line
into --quick: N = 1 and 100, one repeat, short windows, under a minute; exit
status 1 if any trial failed.  Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import background_load, cpu_snapshot, log, wait_quiet  # noqa: E402

HOST = "127.0.0.1"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]
SMOKE = os.environ.get("PYSOCKKIT_BENCH_SMOKE") == "1"
DISTURB_SHARE = 0.10
TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Contender:
    key: str
    label: str
    cmd: list[str]
    missing: str = ""           # why it cannot run here ("" = it can)
    load: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    idle: list[dict[str, Any]] = field(default_factory=list)


class TrialError(Exception):
    pass


class Lines:
    """Lines of a child's stdout (an unbuffered pipe), each by a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buf = b""

    def next(self, deadline: float, what: str) -> str:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TrialError(f"timeout waiting for {what}")
            r, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise TrialError(f"process exited before {what}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace").strip()


# ---------------------------------------------------------------- /proc


def tree(pid: int) -> list[int]:
    """pid and all its descendants (for servers with worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_s(pid: int) -> float:
    """utime+stime (s) of pid's process tree, all threads."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TCK


def status(pid: int, key: str) -> int:
    """Sum over pid's process tree of a /proc/<pid>/status number (VmRSS in
    KiB, Threads)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


# ---------------------------------------------------------------- processes


def stop(proc: Optional[subprocess.Popen[bytes]], grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def start_server(c: Contender, deadline: float) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(["taskset", "-c", "0", *c.cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)
    try:
        line = Lines(proc.stdout).next(deadline, "the server's READY line")  # type: ignore[arg-type]
        if not line.startswith("READY "):
            raise TrialError(f"server said {line!r}, not READY")
        return proc, int(line.split()[1])
    except BaseException:
        stop(proc, 2.0)
        raise


def server_error(proc: subprocess.Popen[bytes]) -> str:
    stop(proc, 1.0)
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    return (err.splitlines() or ["(no message)"])[-1]


def fresh_server(c: Contender) -> tuple[Optional[subprocess.Popen[bytes]], int, dict[str, Any]]:
    """(server, port, {}) or (None, 0, {"error": ...})."""
    try:
        srv, port = start_server(c, time.monotonic() + 30)
    except TrialError as e:
        return None, 0, {"error": str(e)}
    return srv, port, {}


def load_trial(c: Contender, loadgen: str, n: int, warmup: float, seconds: float,
               connect_s: float) -> dict[str, Any]:
    """One measured window of N connections against a fresh server."""
    snap0 = cpu_snapshot()
    deadline = time.monotonic() + connect_s + warmup + seconds + 60
    srv, port, res = fresh_server(c)
    lg: Optional[subprocess.Popen[bytes]] = None
    if srv is None:
        return res
    try:
        lg = subprocess.Popen(["taskset", "-c", "1", loadgen, "load", HOST, str(port), str(n),
                               str(warmup), str(seconds), str(connect_s)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        lines = Lines(lg.stdout)  # type: ignore[arg-type]
        line = lines.next(deadline, "MEASURE_START")
        if line.startswith("{"):    # the load generator gave up before the window
            res = json.loads(line)
        else:
            cpu0 = cpu_s(srv.pid)
            threads = status(srv.pid, "Threads")
            if lines.next(deadline, "MEASURE_END") != "MEASURE_END":
                raise TrialError("load generator: MEASURE_END expected")
            cpu1 = cpu_s(srv.pid)
            threads = max(threads, status(srv.pid, "Threads"))
            res = json.loads(lines.next(deadline, "the load generator's result"))
            res["threads"] = threads
            res["cpu_us_per_req"] = ((cpu1 - cpu0) * 1e6 / res["requests"]
                                     if res["requests"] else None)
        lg.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (TrialError, subprocess.TimeoutExpired, ValueError) as e:
        res = {"error": f"{e}"}
    finally:
        stop(lg, 2.0)
        if srv.poll() is not None and not res.get("error"):
            res = {"error": f"server exited: {server_error(srv)}"}
        stop(srv, 10.0)
    if res.get("errors"):
        res["error"] = f"{res['errors']} errors, first: {res.get('first_error')}"
        err = srv.stderr.read().decode(errors="replace").strip() if srv.stderr else ""
        if err:
            res["error"] += f"; server stderr: {err[-200:]}"
    res["other_share"] = background_load(snap0, cpu_snapshot())[0]
    return res


def idle_trial(c: Contender, loadgen: str, n: int, connect_s: float) -> dict[str, Any]:
    """RSS per idle connection and threads holding them."""
    snap0 = cpu_snapshot()
    deadline = time.monotonic() + connect_s + 60
    srv, port, res = fresh_server(c)
    lg: Optional[subprocess.Popen[bytes]] = None
    if srv is None:
        return res
    try:
        time.sleep(0.3)
        rss0 = status(srv.pid, "VmRSS")
        lg = subprocess.Popen(["taskset", "-c", "1", loadgen, "idle", HOST, str(port), str(n),
                               "60", str(connect_s)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.PIPE, bufsize=0)
        lines = Lines(lg.stdout)  # type: ignore[arg-type]
        hold = json.loads(lines.next(deadline, "the load generator's holding line"))
        time.sleep(0.5)
        rss1 = status(srv.pid, "VmRSS")
        res = {"rss_kib_per_conn": (rss1 - rss0) / n, "threads": status(srv.pid, "Threads"),
               "connect_s": hold["connect_s"], "errors": hold["errors"]}
        lg.stdin.close()  # type: ignore[union-attr]
        done = json.loads(lines.next(deadline, "the load generator's result"))
        res["errors"] = done["errors"]
        res["first_error"] = done["first_error"]
        lg.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (TrialError, subprocess.TimeoutExpired, ValueError, KeyError) as e:
        res = {"error": f"{e}"}
    finally:
        stop(lg, 2.0)
        stop(srv, 10.0)
    if res.get("errors"):
        res["error"] = f"{res['errors']} errors, first: {res.get('first_error')}"
    res["other_share"] = background_load(snap0, cpu_snapshot())[0]
    return res


# ---------------------------------------------------------------- report


def med(xs: list[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def ok(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in trials if not t.get("error")]


def fnum(v: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def ntrials(trials: list[dict[str, Any]]) -> str:
    bad = sum(1 for t in trials if t.get("error"))
    dist = sum(1 for t in trials if t.get("other_share", 0) > DISTURB_SHARE)
    notes = [f"{bad} failed"] * bool(bad) + [f"{dist} disturbed"] * bool(dist)
    return f"{len(trials)}" + (f" ({', '.join(notes)})" if notes else "")


def rps(c: Optional[Contender], n: int) -> Optional[float]:
    if c is None or c.missing:
        return None
    return med([t["rps"] for t in ok(c.load.get(n, []))])


def load_table(cs: list[Contender], n: int) -> list[str]:
    by = {c.key: c for c in cs}
    cref, uv = rps(by.get("c"), n), rps(by.get("uvloop"), n)
    out = [f"### {n:,} connection{'s' * (n != 1)}", "",
           "| server | req/s (median) | min | max | × C epoll | × uvloop | p50 µs | p99 µs "
           "| server CPU µs/req | threads | silent conns | n |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cs:
        if c.missing:
            out.append(f"| {c.label} | {c.missing} |||||||||||")
            continue
        trials = c.load.get(n, [])
        good = ok(trials)
        if not good:
            err = next((t["error"] for t in trials if t.get("error")), "not run")
            out.append(f"| {c.label} | error: {err} |||||||||| {ntrials(trials)} |")
            continue
        r = [t["rps"] for t in good]
        m = statistics.median(r)
        cpu = [t["cpu_us_per_req"] for t in good if t.get("cpu_us_per_req") is not None]
        out.append(
            f"| {c.label} | {m:,.0f} | {min(r):,.0f} | {max(r):,.0f} "
            f"| {fnum(m / cref if cref else None, '{:.2f}')} "
            f"| {fnum(m / uv if uv else None, '{:.2f}')} "
            f"| {fnum(med([t['p50_us'] for t in good]), '{:,.1f}')} "
            f"| {fnum(med([t['p99_us'] for t in good]), '{:,.1f}')} "
            f"| {fnum(med(cpu), '{:.1f}')} | {max(t['threads'] for t in good)} "
            f"| {max(t['silent'] for t in good)} | {ntrials(trials)} |")
    return out + [""]


def idle_table(cs: list[Contender], n: int) -> list[str]:
    out = [f"### {n:,} idle connections: server memory and threads", "",
           "| server | RSS KiB per connection (median) | min | max | threads holding them "
           "| connect s (median) | n |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for c in cs:
        if c.missing:
            out.append(f"| {c.label} | {c.missing} ||||||")
            continue
        good = ok(c.idle)
        if not good:
            err = next((t["error"] for t in c.idle if t.get("error")), "not run")
            out.append(f"| {c.label} | error: {err} ||||| {ntrials(c.idle)} |")
            continue
        r = [t["rss_kib_per_conn"] for t in good]
        out.append(f"| {c.label} | {statistics.median(r):.1f} | {min(r):.1f} | {max(r):.1f} "
                   f"| {max(t['threads'] for t in good)} "
                   f"| {statistics.median([t['connect_s'] for t in good]):.2f} "
                   f"| {ntrials(c.idle)} |")
    return out + [""]


def targets(cs: list[Contender], conns: list[int], idle_n: int, key: str = "sk") -> list[str]:
    by = {c.key: c for c in cs}
    sk = by.get(key)
    out = [f"### Targets of issue 13 (same-run ratios, {sk.label if sk else key})", "",
           "| target | measured | verdict |", "|---|---:|---|"]

    def row(name: str, v: Optional[float], goal: float, higher: bool, fmt: str) -> None:
        if v is None:
            out.append(f"| {name} | – | not measured |")
            return
        met = v >= goal if higher else v <= goal
        out.append(f"| {name} | {fmt.format(v)} | {'met' if met else 'missed'} |")

    for n in [x for x in conns if x >= 100]:
        s, cref, uv = rps(sk, n), rps(by.get("c"), n), rps(by.get("uvloop"), n)
        row(f"{n:,} conns: ≥ 0.8× C epoll", s / cref if s and cref else None, 0.8, True,
            "{:.2f}×")
        row(f"{n:,} conns: ≥ 1.25× uvloop streams", s / uv if s and uv else None, 1.25, True,
            "{:.2f}×")
        p_sk = med([t["p99_us"] for t in ok(sk.load.get(n, []))]) if sk else None
        p_uv = med([t["p99_us"] for t in ok(by["uvloop"].load.get(n, []))]) \
            if "uvloop" in by else None
        row(f"{n:,} conns: p99 ≤ uvloop's", p_sk / p_uv if p_sk and p_uv else None, 1.0, False,
            "{:.2f}× uvloop's")
    good = ok(sk.idle) if sk else []
    row(f"≤ 8 KiB RSS per idle connection ({idle_n:,})",
        med([t["rss_kib_per_conn"] for t in good]), 8.0, False, "{:.1f} KiB")
    row(f"{idle_n:,} connections held with ≤ 8 threads",
        max((t["threads"] for t in good), default=None), 8, False, "{} threads")
    return out + [""]


def header(args: argparse.Namespace, cc: str, wall: float, other: float) -> list[str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "?")
    except OSError:
        pass
    try:
        import uvloop  # noqa: PLC0415

        uvv = f"uvloop {uvloop.__version__}"
    except ImportError:
        uvv = "uvloop not installed"
    return [
        "# Many connections: one server process, a C load generator",
        "",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- machine: {platform.system()} {platform.release()} ({platform.machine()}), {cpu}, "
        f"{os.cpu_count()} CPUs online",
        f"- Python: {platform.python_implementation()} {platform.python_version()}; {uvv}",
        f"- C: `{cc}`",
        "- command: `" + " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]) + "`"
        + (" (PYSOCKKIT_BENCH_SMOKE=1)" if SMOKE else ""),
        f"- server on CPU 0, load generator on CPU 1; listen backlog {args.backlog}; "
        f"warm-up {args.warmup:g} s ({args.warmup_big:g} s at ≥ 10,000), window "
        f"{args.seconds:g} s; {args.repeat} repeat(s), contenders interleaved",
        f"- other work on the machine during the run: {other:.1%} of the CPUs; "
        f"wall time {wall:.0f} s"
        + (" — **disturbed: rerun on a quiet machine**" if other > 0.05 else ""),
        "",
        "One 64-byte request ([4-byte big-endian length][64 bytes]) in flight per "
        "connection, every reply checked byte for byte.  req/s = replies in the window / "
        "window; p50/p99 from a histogram of every round trip in the window (1.6 % "
        "buckets); server CPU = utime+stime of the server's process tree over the window "
        "/ replies; threads = the server's, at the window's start and end (max); silent "
        "conns = connections with no reply in the window (max over trials); n = trials "
        "(failed = the load generator or server reported an error; disturbed = other work "
        "used over 10 % of the CPUs).  Medians over trials; ratios are median over median "
        "in the same run.",
        "",
    ]


# ---------------------------------------------------------------- main


def build(tmp: str) -> tuple[str, str, str]:
    cc = os.environ.get("CC", "cc")
    exes = []
    for name in ("loadgen", "echo_epoll"):
        exe = os.path.join(tmp, name)
        cmd = [cc, *CFLAGS, "-o", exe, os.path.join(HERE, name + ".c")]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode:
            sys.exit(f"building {name}.c failed:\n{' '.join(cmd)}\n{p.stderr}")
        exes.append(exe)
    return exes[0], exes[1], f"{cc} {' '.join(CFLAGS)}"


def contenders(echo: str, backlog: int) -> list[Contender]:
    py = [sys.executable, os.path.join(HERE, "many_servers.py")]
    cs = [
        Contender("c", "C epoll echo (one thread)", [echo, str(backlog)]),
        Contender("uvloop", "uvloop streams", [*py, "uvloop", str(backlog)]),
        Contender("asyncio", "asyncio streams", [*py, "asyncio", str(backlog)]),
        Contender("threading", "stdlib ThreadingTCPServer", [*py, "threading", str(backlog)]),
        Contender("aio", "pysockkit.aio.serve", [*py, "aio", str(backlog)]),
        Contender("sk", "sk.serve", [*py, "sk", str(backlog)]),
        Contender("sk-w0", "sk.serve(workers=0)", [*py, "sk-w0", str(backlog)]),
        Contender("sk-p2", "sk.serve(processes=2)", [*py, "sk-p2", str(backlog)]),
    ]
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        cs[1].missing = "n/a: uvloop not installed (pip install uvloop)"
    try:
        import pysockkit as sk  # noqa: PLC0415

        if "processes" not in inspect.signature(sk.serve).parameters:
            cs[7].missing = "n/a: sk.serve has no processes= parameter yet"
    except ImportError as e:
        for c in cs[4:]:
            c.missing = f"n/a: import pysockkit failed ({e})"
    return cs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: N=1,100, one repeat")
    ap.add_argument("--conns", default="1,100,1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=2.0, help="s of warm-up (N < 10,000)")
    ap.add_argument("--warmup-big", type=float, default=5.0, help="s of warm-up (N ≥ 10,000)")
    ap.add_argument("--seconds", type=float, default=3.0, help="s of the measuring window")
    ap.add_argument("--connect", type=float, default=60.0,
                    help="s allowed to open the connections (and, idle, one exchange each)")
    ap.add_argument("--idle", type=int, default=None,
                    help="idle connections for RSS (default: the largest N; 0: skip)")
    ap.add_argument("--backlog", type=int, default=4096)
    ap.add_argument("--only", default="", help="comma-separated keys: c,uvloop,asyncio,"
                    "threading,aio,sk,sk-w0,sk-p2")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if SMOKE or args.quick:
        args.quick = True
        args.conns, args.repeat, args.warmup, args.warmup_big = "1,100", 1, 0.3, 0.3
        args.seconds, args.connect = 0.5, 20.0
        args.idle = 100 if args.idle is None else min(args.idle, 100)
    conns = [int(x) for x in args.conns.split(",") if x]
    idle_n = max(conns) if args.idle is None else args.idle
    if not {0, 1} <= os.sched_getaffinity(0) or shutil.which("taskset") is None:
        sys.exit("many.py needs CPUs 0 and 1 and taskset (util-linux)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < max(conns + [idle_n]) + 64:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {max(conns)} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    t0 = time.monotonic()
    snap0 = cpu_snapshot()
    with tempfile.TemporaryDirectory(prefix="pysockkit-many-") as tmp:
        loadgen, echo, cc = build(tmp)
        cs = contenders(echo, args.backlog)
        if args.only:
            keep = set(args.only.split(","))
            cs = [c for c in cs if c.key in keep]
        runnable = [c for c in cs if not c.missing]
        for n in conns:
            warm = args.warmup_big if n >= 10000 else args.warmup
            for r in range(args.repeat):
                for c in runnable:
                    res = load_trial(c, loadgen, n, warm, args.seconds, args.connect)
                    c.load.setdefault(n, []).append(res)
                    log(f"{n:>6} conns  {c.key:<10} repeat {r + 1}: "
                        + (f"error: {res['error']}" if res.get("error") else
                           f"{res['rps']:,.0f} req/s  p99 {res['p99_us']:,.0f} µs  "
                           f"threads {res['threads']}"))
        if idle_n:
            for r in range(args.repeat):
                for c in runnable:
                    res = idle_trial(c, loadgen, idle_n, args.connect)
                    c.idle.append(res)
                    log(f"{idle_n:>6} idle   {c.key:<10} repeat {r + 1}: "
                        + (f"error: {res['error']}" if res.get("error") else
                           f"{res['rss_kib_per_conn']:.1f} KiB/conn  threads {res['threads']}"))
    other, _ = background_load(snap0, cpu_snapshot())
    lines = header(args, cc, time.monotonic() - t0, other)
    for n in conns:
        lines += load_table(cs, n)
    if idle_n:
        lines += idle_table(cs, idle_n)
    for key in ("sk", "sk-w0"):
        if any(c.key == key for c in cs):
            lines += targets(cs, conns, idle_n, key)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    failed = any(t.get("error") for c in runnable for ts in [*c.load.values(), c.idle] for t in ts)
    return 1 if (failed and args.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
