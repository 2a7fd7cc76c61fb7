#!/usr/bin/env python3
"""Benchmark harness for pysockkit: one loopback connection, two processes.

    python bench/run.py [--quick] [--only SCENARIO[,SCENARIO...]] [--repeat 5]
                        [--seconds 1.0] [--out bench/RESULTS.md]

Scenarios: stream-64, stream-1M, rtt-64 (run twice: the two processes on two
CPUs, then both on one CPU), short-conn.  See bench/README.md.

Each trial starts the server (receiver) process pinned to CPU 0, waits for
its "READY <port>" line, then starts the client (sender) process pinned to
CPU 1 (CPU 0 for the one-CPU rtt-64 variant).  The measuring side prints
"RESULT {json}".  Every trial has a deadline; both processes are killed if
anything goes wrong.  Message counts are sized per contender by one pilot
trial so that a measured trial takes about --seconds; the repeats of all
contenders of a scenario are interleaved (round-robin) so slow drift of the
machine hits everyone alike.  The C reference (bench/cref.c) is compiled
into a temporary directory with cc -O2 -Wall -Wextra -Werror.

PYSOCKKIT_BENCH_SMOKE=1 (CI sets it to run bench/README.md's commands as
written) turns any command line into a smoke run: --quick with a twentieth
of its counts and one repeat, and exit status 1 if any row failed.  Its figures
mean nothing; it only shows that every contender runs and checks its data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = os.path.join(HERE, "contenders.py")
CREF_SRC = os.path.join(HERE, "cref.c")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]
READY_TIMEOUT_S = 20.0
SMOKE = os.environ.get("PYSOCKKIT_BENCH_SMOKE") == "1"
DISTURB_SHARE = 0.10  # other work above this share of the CPUs spoils a trial
DISTURB_RETRIES = 2


@dataclass
class Row:
    key: str
    label: str
    scen: str  # scenario name passed to the processes
    server: str  # "c" or a contenders.py IMPL
    client: str
    hint: float  # rough count/s, only to size the pilot (and --quick) trials
    group: str = ""  # stream-64: "batch" or "per" (which C line it is closest to)
    diag: bool = False  # a diagnostic row, not a contender of its own
    # filled in by the run
    count: int = 0
    values: list = field(default_factory=list)  # metric per trial
    p99s: list = field(default_factory=list)  # rtt only
    error: str = ""
    disturbed: int = 0  # trials kept although other work used the CPUs


@dataclass
class Section:
    name: str  # the --only name
    title: str
    cpus: tuple  # (server CPU, client CPU)
    unit: str  # "msg/s", "GB/s", "us", "conn/s"
    min_count: int
    rows: list


def make_sections() -> list[Section]:
    def s64():
        return [
            Row("c-batch", "C reference, batched (~64 KiB writes, one big read)",
                "stream64-batch", "c", "c", 2e7, "batch"),
            Row("c-per", "C reference, one frame per send()",
                "stream64-per", "c", "c", 2.3e5, "per"),
            Row("sk-per", "pysockkit send / recv", "stream64-per", "sk", "sk", 5e5, "per"),
            Row("sk-wb", "pysockkit send (write_behind=True) / recv", "stream64-per", "sk",
                "sk-wb", 1e6, "per"),
            Row("sk-batch", "pysockkit send_many / recv_many",
                "stream64-batch", "sk", "sk", 5e6, "batch"),
            Row("sk-batch-cs", "C batched sender -> pysockkit recv_many",
                "stream64-batch", "sk", "c", 5e6, "batch", diag=True),
            Row("sk-batch-cr", "pysockkit send_many -> C receiver",
                "stream64-batch", "c", "sk", 5e6, "batch", diag=True),
            Row("std-per", "stdlib, per message (sendall; buffered reader)",
                "stream64-per", "stdlib", "stdlib", 1.8e5, "per"),
            Row("std-batch", "stdlib, batched by hand (join+sendall; recv_into+parse)",
                "stream64-batch", "stdlib", "stdlib", 1.9e6, "batch"),
            Row("aio", "asyncio streams (write+drain/1024; readexactly)",
                "stream64-per", "asyncio", "asyncio", 2e5, "per"),
            Row("zmq", "pyzmq PUSH/PULL, one message per send", "stream64-per", "zmq", "zmq",
                1.1e6, "per"),
        ]

    def s1m():
        return [
            Row("c", "C reference", "stream1m", "c", "c", 5000),
            Row("sk", "pysockkit send / recv", "stream1m", "sk", "sk", 4000),
            Row("sk-cs", "C sender -> pysockkit recv", "stream1m", "sk", "c", 4000, diag=True),
            Row("sk-cr", "pysockkit send -> C receiver", "stream1m", "c", "sk", 4000, diag=True),
            Row("std", "stdlib (sendmsg; recv_into a preallocated buffer)",
                "stream1m", "stdlib", "stdlib", 5000),
            Row("aio", "asyncio streams", "stream1m", "asyncio", "asyncio", 400),
            Row("zmq", "pyzmq PUSH/PULL (copy=False)", "stream1m", "zmq", "zmq", 3500),
        ]

    def rtt(hint_scale):
        h = hint_scale
        return [
            Row("c", "C reference", "rtt64", "c", "c", 6e4 * h),
            Row("sk", "pysockkit conn.request (pysockkit echo server)", "rtt64", "sk", "sk",
                4e4 * h),
            Row("sk-c", "pysockkit conn.request -> C echo server", "rtt64", "c", "sk",
                4e4 * h, diag=True),
            Row("sk-wb", "pysockkit conn.request, write_behind=True (pysockkit echo server)",
                "rtt64", "sk", "sk-wb", 4e4 * h),
            Row("sk-serve", "pysockkit conn.request -> sk.serve(workers=0)", "rtt64",
                "sk-serve", "sk", 4e4 * h),
            Row("std", "stdlib (sendall; buffered reader)", "rtt64", "stdlib", "stdlib",
                5e4 * h),
            Row("aio", "asyncio streams", "rtt64", "asyncio", "asyncio", 1e4 * h),
            Row("zmq", "pyzmq REQ/REP", "rtt64", "zmq", "zmq", 1.8e4 * h),
            Row("floor", "CPython floor: socket send + recv(68), no framing, both sides",
                "rtt64", "floor", "floor", 5e4 * h, diag=True),
        ]

    def short():
        return [
            Row("c", "C reference", "shortconn", "c", "c", 1e4),
            Row("sk", "pysockkit sk.call (pysockkit server)", "shortconn", "sk", "sk", 6e3),
            Row("sk-c", "pysockkit sk.call -> C server", "shortconn", "c", "sk", 8e3,
                diag=True),
            Row("sk-serve", "pysockkit sk.call -> sk.serve(workers=0)", "shortconn",
                "sk-serve", "sk", 8e3),
            Row("std", "stdlib (connect, sendall, recv, close)", "shortconn", "stdlib",
                "stdlib", 9e3),
            Row("aio", "asyncio streams (open_connection per call)", "shortconn",
                "asyncio", "asyncio", 2e3),
            Row("floor", "CPython floor: raw fds/_socket, one send + one recv, both sides",
                "shortconn", "floor", "floor", 1e4, diag=True),
        ]

    return [
        Section("stream-64", "stream-64: one-way 64-byte frames", (0, 1), "msg/s", 20000,
                s64()),
        Section("stream-1M", "stream-1M: one-way 1 MiB frames", (0, 1), "GB/s", 50, s1m()),
        Section("rtt-64", "rtt-64, two CPUs: 64-byte request/reply", (0, 1), "us", 2000,
                rtt(0.25)),
        Section("rtt-64", "rtt-64, one CPU (both processes on CPU 0)", (0, 0), "us", 2000,
                rtt(1.0)),
        Section("short-conn", "short-conn: connect, one 64-byte exchange, close",
                (0, 1), "conn/s", 500, short()),
    ]


# ---------------------------------------------------------------- processes


class TrialError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pinner(cpu: int):
    def pin():
        os.sched_setaffinity(0, {cpu})

    return pin


def command(impl: str, role: str, cref: str) -> list[str]:
    if impl == "c":
        return [cref, role]
    return [sys.executable, CONTENDERS, impl, role]


def read_line(proc: subprocess.Popen, deadline: float) -> tuple[str, bytes]:
    """First line of proc's stdout (unbuffered pipe) by the deadline, and
    whatever followed it."""
    fd = proc.stdout.fileno()
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TrialError("server did not print READY in time")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise TrialError("server exited before READY")
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line.decode(errors="replace"), rest


def parse_result(out: bytes) -> dict | None:
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None


def tail(b: bytes, n: int = 300) -> str:
    s = b.decode(errors="replace").strip().replace("\n", " | ")
    return s[-n:]


def run_trial(row: Row, sec: Section, count: int, cref: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    procs: list[subprocess.Popen] = []
    try:
        srv = subprocess.Popen(
            command(row.server, "server", cref) + [row.scen, str(count)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            bufsize=0, preexec_fn=pinner(sec.cpus[0]),
        )
        procs.append(srv)
        try:
            line, rest = read_line(srv, min(deadline, time.monotonic() + READY_TIMEOUT_S))
        except TrialError as e:
            if srv.poll() is not None:
                raise TrialError(f"{e}: {tail(srv.stderr.read())}") from None
            raise
        if not line.startswith("READY "):
            raise TrialError(f"server said {line!r}")
        port = line.split()[1]
        cli = subprocess.Popen(
            command(row.client, "client", cref) + [row.scen, str(count), port],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=pinner(sec.cpus[1]),
        )
        procs.append(cli)
        try:
            cout, cerr = cli.communicate(timeout=max(0.1, deadline - time.monotonic()))
            sout, serr = srv.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TrialError(f"trial exceeded {timeout:.0f} s") from None
        sout = rest + sout
        if srv.returncode or cli.returncode:
            raise TrialError(
                f"exit status server={srv.returncode} client={cli.returncode}: "
                f"{tail(serr + cerr)}"
            )
        res = parse_result(sout) or parse_result(cout)
        if not res:
            raise TrialError("no RESULT line")
        return res
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


def metric(sec: Section, res: dict) -> float:
    if sec.unit == "us":
        return float(res["median_us"])
    rate = res["count"] / res["elapsed_s"]
    if sec.unit == "GB/s":
        return rate * (1 << 20) / 1e9
    return rate


# ---------------------------------------------------------------- report


def fmt_value(unit: str, v: float) -> str:
    if unit == "msg/s":
        return f"{v / 1e6:.3f} M"
    if unit == "conn/s":
        return f"{v / 1e3:.2f} k"
    if unit == "GB/s":
        return f"{v:.2f}"
    return f"{v:.1f}"


def unit_label(unit: str) -> str:
    return {"msg/s": "msg/s", "conn/s": "conn/s", "GB/s": "GB/s", "us": "µs"}[unit]


def med(xs):
    return statistics.median(xs) if xs else None


def ref_rows(sec: Section) -> dict:
    refs = {r.group: r for r in sec.rows if r.server == "c" and r.client == "c"}
    return refs


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def render_section(sec: Section) -> str:
    refs = ref_rows(sec)
    u = unit_label(sec.unit)
    out = [f"### {sec.title}", ""]
    if sec.name == "stream-64":
        hdr = (f"| contender | median {u} | min | max | × C batched | × C 1 frame/send() | n |")
        out += [hdr, "|---|---:|---:|---:|---:|---:|---:|"]
    elif sec.unit == "us":
        out += ["| contender | median RTT µs | min | max | p99 µs | × C (median RTT) | n |",
                "|---|---:|---:|---:|---:|---:|---:|"]
    else:
        out += [f"| contender | median {u} | min | max | × C | n |",
                "|---|---:|---:|---:|---:|---:|"]
    for r in sec.rows:
        label = r.label + (" †" if r.diag else "")
        if r.error or not r.values:
            why = (r.error or "no data").replace("|", "/")
            ncols = 6 if sec.name == "stream-64" or sec.unit == "us" else 5
            out.append(f"| {label} | {why} |" + " |" * (ncols - 1))
            continue
        m = med(r.values)
        lo, hi = min(r.values), max(r.values)
        cells = [label, fmt_value(sec.unit, m), fmt_value(sec.unit, lo), fmt_value(sec.unit, hi)]
        if sec.name == "stream-64":
            for g in ("batch", "per"):
                x = ratio(m, med(refs[g].values)) if g in refs else None
                cells.append(f"{x:.2f}" if x is not None else "–")
        elif sec.unit == "us":
            cells.append(f"{med(r.p99s):.1f} ({min(r.p99s):.1f}–{max(r.p99s):.1f})")
            ref = next(iter(refs.values()), None)
            x = ratio(m, med(ref.values)) if ref else None
            cells.append(f"{x:.2f}" if x is not None else "–")
        else:
            ref = next(iter(refs.values()), None)
            x = ratio(m, med(ref.values)) if ref else None
            cells.append(f"{x:.2f}" if x is not None else "–")
        cells.append(f"{len(r.values)}×{r.count}"
                     + (f" ({r.disturbed} disturbed)" if r.disturbed else ""))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def find(sections, title_prefix, key):
    for s in sections:
        if s.title.startswith(title_prefix):
            for r in s.rows:
                if r.key == key:
                    return r
    return None


def targets(sections) -> list[str]:
    # (description, section title prefix, row, baseline row, op, threshold)
    spec = [
        ("stream-64 send_many/recv_many ≥ 1.5× stdlib batched by hand",
         "stream-64", "sk-batch", "std-batch", ">=", 1.5),
        ("stream-64 send_many/recv_many ≥ 4× pyzmq PUSH/PULL",
         "stream-64", "sk-batch", "zmq", ">=", 4.0),
        ("stream-64 send/recv per message ≥ 1.3× stdlib per message",
         "stream-64", "sk-per", "std-per", ">=", 1.3),
        ("stream-64 send (write_behind=True)/recv per message ≥ 1.5× pyzmq PUSH/PULL",
         "stream-64", "sk-wb", "zmq", ">=", 1.5),
        ("rtt-64 on one CPU: write_behind=True median ≤ 1.05× without",
         "rtt-64, one CPU", "sk-wb", "sk", "<=", 1.05),
        ("stream-1M ≥ 0.95× the C reference", "stream-1M", "sk", "c", ">=", 0.95),
        ("rtt-64 on one CPU: median ≤ 1.15× the C reference",
         "rtt-64, one CPU", "sk", "c", "<=", 1.15),
        ("short-conn ≥ 0.9× the C reference", "short-conn", "sk", "c", ">=", 0.9),
    ]
    lines = []
    for desc, sec, a, b, op, thr in spec:
        ra, rb = find(sections, sec, a), find(sections, sec, b)
        if ra is None or rb is None:
            continue  # scenario not run (--only)
        if ra.error or rb.error or not ra.values or not rb.values:
            lines.append(f"- n/a — {desc}: {ra.error or rb.error or 'no data'}")
            continue
        x = med(ra.values) / med(rb.values)
        ok = x >= thr if op == ">=" else x <= thr
        if op == ">=":
            gap = (x / thr - 1) * 100
        else:
            gap = (thr / x - 1) * 100
        word = "MET" if ok else "MISSED"
        floor = ""
        rf = find(sections, sec, "floor") if b == "c" else None
        if rf is not None and rf.values and not rf.error:
            # what no CPython program beats: the same ratio for the floor row
            floor = f"; the CPython floor, same run: {med(rf.values) / med(rb.values):.2f}×"
        lines.append(f"- **{word}** — {desc}: measured {x:.2f}× "
                     f"({'+' if gap >= 0 else ''}{gap:.0f}% vs the target{floor})")
    return lines


def environment(cref_cc: str, load: str) -> list[str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import zmq  # noqa: PLC0415

        zv = f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})"
    except Exception:  # noqa: BLE001
        zv = "pyzmq not importable"
    skv = sk_probe()[1] or "importable"
    return [
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- kernel: {platform.system()} {platform.release()} ({platform.machine()})",
        f"- CPU: {cpu}, {os.cpu_count()} CPUs online, affinity {sorted(os.sched_getaffinity(0))}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"- {zv}",
        f"- pysockkit: {skv}",
        f"- C reference: {cref_cc}",
        f"- {load}",
        "- command: `" + " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]) + "`",
    ]


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall, busy s of the whole machine excluding irq/softirq, steal s,
    CPU s used by this harness and its reaped children)."""
    tck = os.sysconf("SC_CLK_TCK")
    busy = steal = 0.0
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        busy = (v[0] + v[1] + v[2]) / tck
        steal = (v[7] if len(v) > 7 else 0) / tck
    except (OSError, ValueError, IndexError):
        pass
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return time.monotonic(), busy, steal, own


def background_load(a, b) -> tuple[float, float]:
    """Share of the machine (0..1) busy with other work between two
    snapshots, and the share stolen by the hypervisor.  Loopback softirq
    time is left out of both sides, so this slightly overstates nothing."""
    wall = max(1e-9, b[0] - a[0]) * (os.cpu_count() or 1)
    other = max(0.0, (b[1] - a[1]) - (b[3] - a[3]))
    return other / wall, (b[2] - a[2]) / wall


def wait_quiet(limit_s: float, threshold: float = 0.10) -> float:
    """Wait (at most limit_s) for three 2 s windows in a row in which other
    work uses under `threshold` of the machine; returns the last share."""
    deadline = time.monotonic() + limit_s
    quiet = 0
    while True:
        a = cpu_snapshot()
        time.sleep(2.0)
        share, _ = background_load(a, cpu_snapshot())
        quiet = quiet + 1 if share < threshold else 0
        if quiet >= 3 or time.monotonic() >= deadline:
            return share
        if not quiet:
            log(f"waiting for a quiet machine: {share:.0%} busy with other work")


_SK = None


def sk_probe() -> tuple[bool, str]:
    """Can a fresh interpreter import pysockkit?  (ok, reason-or-version)"""
    global _SK
    if _SK is None:
        code = ("import pysockkit as sk, os; "
                "print(getattr(sk, '__version__', '?'), os.path.dirname(sk.__file__))")
        try:
            p = subprocess.run([sys.executable, "-c", code], capture_output=True,
                               text=True, timeout=60, cwd=tempfile.gettempdir())
            if p.returncode == 0:
                v, _, where = p.stdout.strip().partition(" ")
                _SK = (True, f"{v} from {where}")
            else:
                last = (p.stderr.strip().splitlines() or ["?"])[-1]
                _SK = (False, f"import pysockkit failed ({last})")
        except subprocess.TimeoutExpired:
            _SK = (False, "import pysockkit timed out")
    return _SK


def build_cref(tmp: str) -> tuple[str, str]:
    cc = os.environ.get("CC", "cc")
    exe = os.path.join(tmp, "cref")
    cmd = [cc, *CFLAGS, "-o", exe, CREF_SRC]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode:
        sys.exit(f"building the C reference failed:\n{' '.join(cmd)}\n{p.stderr}")
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return exe, f"`{cc} {' '.join(CFLAGS)}` ({ver.splitlines()[0] if ver else cc})"


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: small fixed counts, 1 repeat, no pilot (< 60 s)")
    ap.add_argument("--only", default="",
                    help="comma-separated: stream-64, stream-1M, rtt-64, short-conn")
    ap.add_argument("--repeat", type=int, default=None, help="trials per contender (default 5)")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="target duration of one measured trial (default 1.0)")
    ap.add_argument("--out", default="", help="also write the report (markdown) here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for other work to use < 10%% of the CPUs")
    args = ap.parse_args()
    if SMOKE:
        log("PYSOCKKIT_BENCH_SMOKE=1: a smoke run (tiny counts, one repeat); the figures mean nothing")
        args.quick, args.repeat = True, 1

    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        log(f"warning: CPUs 0 and 1 are not both available (affinity "
            f"{sorted(os.sched_getaffinity(0))}); pinning may fail")
    repeat = args.repeat or (1 if args.quick else 5)
    sections = make_sections()
    if args.only:
        want = {w.strip().lower() for w in args.only.split(",") if w.strip()}
        known = {s.name.lower() for s in sections}
        if want - known:
            sys.exit(f"unknown scenario(s) {sorted(want - known)}; known: {sorted(known)}")
        sections = [s for s in sections if s.name.lower() in want]

    sk_ok, sk_why = sk_probe()
    if not sk_ok:
        log(f"pysockkit contenders skipped: {sk_why}")
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    tmp = tempfile.mkdtemp(prefix="pysockkit-bench-")
    t_start = time.monotonic()
    snap0 = cpu_snapshot()
    try:
        cref, cref_cc = build_cref(tmp)
        for sec in sections:
            log(f"== {sec.title}")
            live = []
            for r in sec.rows:
                if "sk" in (r.server, r.client) and not sk_ok:
                    r.error = f"n/a: {sk_why}"
                    continue
                live.append(r)
            # Size each contender's trials: a pilot run (also a warm-up and a
            # correctness check), or the hint alone with --quick.
            for r in live:
                if SMOKE:
                    r.count = max(sec.min_count // 80, int(r.hint * 0.015))
                    continue
                if args.quick:
                    r.count = max(sec.min_count // 4, int(r.hint * 0.3))
                    continue
                pilot = max(sec.min_count, int(r.hint * 0.15 * args.seconds))
                try:
                    res = run_trial(r, sec, pilot, cref, timeout=120)
                except TrialError as e:
                    r.error = f"error: {e}"
                    log(f"  {r.key:10s} pilot FAILED: {e}")
                    continue
                rate = res["count"] / res["elapsed_s"]
                r.count = max(sec.min_count, int(rate * args.seconds))
                log(f"  {r.key:10s} pilot {pilot} -> {rate:,.0f}/s, count {r.count}")
            for rep in range(repeat):
                for r in live:
                    if r.error:
                        continue
                    timeout = 30.0 if args.quick else max(60.0, 30 * args.seconds)
                    # A trial during which other work used the CPUs is run
                    # again (at most DISTURB_RETRIES times), then kept and
                    # counted as disturbed.
                    try:
                        retries = 0 if args.quick else DISTURB_RETRIES
                        for attempt in range(retries + 1):
                            snap = cpu_snapshot()
                            res = run_trial(r, sec, r.count, cref, timeout=timeout)
                            bg, st = background_load(snap, cpu_snapshot())
                            if bg + st < DISTURB_SHARE:
                                break
                            log(f"  {r.key:10s} trial {rep + 1}: disturbed "
                                f"({bg:.0%} other work, {st:.0%} steal)"
                                + ("; again" if attempt < retries else "; kept"))
                        else:
                            r.disturbed += 1
                    except TrialError as e:
                        r.error = f"error: {e}"
                        log(f"  {r.key:10s} trial {rep + 1} FAILED: {e}")
                        continue
                    v = metric(sec, res)
                    r.values.append(v)
                    if "p99_us" in res:
                        r.p99s.append(float(res["p99_us"]))
                    extra = f" p99 {res['p99_us']:.1f}" if "p99_us" in res else ""
                    log(f"  {r.key:10s} trial {rep + 1}/{repeat}: "
                        f"{fmt_value(sec.unit, v)} {unit_label(sec.unit)}{extra} "
                        f"({res['elapsed_s']:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bg, st = background_load(snap0, cpu_snapshot())
    load = (f"other work on the machine during the run: {bg:.1%} of the CPUs; "
            f"hypervisor steal: {st:.1%}")
    if bg > 0.05 or st > 0.05:
        load += " — **results are disturbed; rerun on a quiet machine**"
        log("warning: " + load)

    report = ["# pysockkit benchmark results", ""]
    report += environment(cref_cc, load)
    target = ("smoke (PYSOCKKIT_BENCH_SMOKE=1: the figures mean nothing)" if SMOKE
              else "quick" if args.quick else f"{args.seconds:g} s")
    report += [f"- repeats: {repeat} per contender, interleaved; trial target {target}; "
               f"wall time {time.monotonic() - t_start:.0f} s", ""]
    report += ["Values are the median over the trials, with min and max. Ratios are "
               "medians over medians, to the C reference of the same table (for "
               "rtt-64 a ratio below 1 is better). n = trials × messages (or "
               "connections) per trial; a trial during which other work used "
               f"over {DISTURB_SHARE:.0%} of the CPUs is run again up to "
               f"{DISTURB_RETRIES} times, then kept and counted as disturbed. † = diagnostic row, not a contender of its own: "
               "one pysockkit side against the C reference's other side, or the CPython "
               "floor (the least a CPython program does per exchange: one socket call to "
               "send, one to receive, no framing, no timeout).", ""]
    for sec in sections:
        report += [render_section(sec), ""]
    tl = targets(sections)
    if tl:
        report += ["### Targets", ""] + tl + [""]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")
    failed = [f"{sec.title}: {r.label}: {r.error}" for sec in sections for r in sec.rows
              if r.error]
    if SMOKE and failed:
        log("smoke run: rows failed:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
