"""How fast is a full TCP socket listing?  sk.sockets() vs psutil vs ss.

Opens N loopback connection pairs (default 5,000: 10,000 sockets plus the
listener; RLIMIT_NOFILE is raised as needed), then times one full listing
of every TCP socket in the network namespace by each contender:

- ``sk.sockets()``: pysockkit's sock_diag dump (C, GIL released), entries
  as frozen dataclasses;
- ``sk.sockets(info=True)``: the same with each socket's tcp_info;
- ``psutil.net_connections(kind="tcp")``: parses /proc/net/tcp{,6} and
  maps socket inodes to pids by reading every /proc/PID/fd link (which is
  part of what it returns, and most of its cost);
- ``ss -tan`` as a subprocess, output captured (process start included:
  that is what a script calling ss pays).

Each is run once to warm up, then --repeat times; the median is reported
with the ratio to sk.sockets().  Every socket is closed with SO_LINGER 0
(RST) at the end, so no TIME_WAIT is left behind.

Usage::

    pip install psutil
    python bench/sockets_bench.py                      # 5,000 pairs, median of 5
    python bench/sockets_bench.py --pairs 500 --repeat 3 --out -   # quick, no file

The report goes to stdout and, unless --out is "-", to
bench/RESULTS-sockets.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout too

import pysockkit as sk  # noqa: E402
from pysockkit._observe import sockets  # noqa: E402

LINGER0 = struct.pack("ii", 1, 0)
DEADLINE_S = 600.0  # the whole run; a guard, not an expectation


def raise_nofile(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            except (ValueError, OSError):
                sys.exit(f"need {need} file descriptors; the hard limit is {hard} "
                         "(raise it, or use --pairs)")
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_pairs(n: int) -> tuple[socket.socket, list[socket.socket]]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    addr = srv.getsockname()
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            c = socket.create_connection(addr, timeout=5)
            a, _ = srv.accept()
            socks += [c, a]
    except BaseException:
        close_all(srv, socks)
        raise
    return srv, socks


def close_all(srv: socket.socket, socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        except OSError:
            pass
        s.close()
    socks.clear()
    srv.close()


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its waited-for
    children: what a listing costs, whatever else the machine is doing."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds over `repeat` runs (after one warm-up),
    and the count of entries the last run returned."""
    count = fn()
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = _cpu()
        t0 = time.perf_counter()
        count = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus), count


def run_ss() -> int:
    out = subprocess.run(["ss", "-tanH"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return out.count("\n")


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:,.1f} ms" if s >= 0.01 else f"{s * 1e3:.2f} ms"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5000, help="loopback connection pairs")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per contender")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS-sockets.md"),
                   help='markdown report path, or "-" for none')
    args = p.parse_args(argv)
    t_start = time.monotonic()

    psutil: Any
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        psutil = None
    have_ss = shutil.which("ss") is not None

    limits = raise_nofile(2 * args.pairs + 256)
    t0 = time.perf_counter()
    srv, socks = open_pairs(args.pairs)
    t_open = time.perf_counter() - t0
    Row = tuple[str, Optional[float], Optional[float], Any, str]
    full: list[Row] = []
    one_port: list[Row] = []
    srv2, few = open_pairs(5)  # "my" connections, among all the others
    port2 = srv2.getsockname()[1]
    try:
        total = len(sockets())
        print(f"{len(socks) + len(few)} sockets opened in {t_open:.2f} s; {total} TCP "
              f"sockets in this network namespace", flush=True)

        def ps_port() -> int:
            return len([c for c in psutil.net_connections(kind="tcp")
                        if c.laddr.port == port2 or (c.raddr and c.raddr.port == port2)])

        def ss_port() -> int:
            out = subprocess.run(
                ["ss", "-tanH", f"( sport = :{port2} or dport = :{port2} )"],
                capture_output=True, text=True, check=True, timeout=60).stdout
            return out.count("\n")

        no_psutil = "n/a: pip install psutil"
        no_ss = "n/a: iproute2 not installed"
        plan: list[tuple[list[Row], str, Optional[Callable[[], int]], str]] = [
            (full, "sk.sockets()", lambda: len(sockets()), ""),
            (full, "sk.sockets(info=True)", lambda: len(sockets(info=True)),
             "with tcp_info"),
            (full, 'psutil.net_connections(kind="tcp")',
             (lambda: len(psutil.net_connections(kind="tcp"))) if psutil else None,
             "" if psutil else no_psutil),
            (full, "ss -tan (subprocess)", run_ss if have_ss else None,
             "" if have_ss else no_ss),
            (one_port, "sk.sockets(port=P)", lambda: len(sockets(port=port2)),
             "port filter runs in the kernel"),
            (one_port, "psutil.net_connections(), filtered by port",
             ps_port if psutil else None,
             "psutil cannot filter: full scan" if psutil else no_psutil),
            (one_port, "ss -tan '( sport = :P or dport = :P )'", ss_port if have_ss else None,
             "" if have_ss else no_ss),
        ]
        for table, name, fn, note in plan:
            if time.monotonic() - t_start > DEADLINE_S:
                table.append((name, None, None, "-", "skipped: time limit"))
                continue
            if fn is None:
                table.append((name, None, None, "-", note))
                continue
            med, cpu, count = timed(fn, args.repeat)
            table.append((name, med, cpu, count, note))
            print(f"  {name:<44} {fmt_ms(med):>12} wall {fmt_ms(cpu):>12} CPU  "
                  f"({count} entries)", flush=True)
    finally:
        close_all(srv, socks)
        close_all(srv2, few)

    load = os.getloadavg()
    lines = [
        f"# TCP socket listing: sk.sockets() vs psutil vs ss, {2 * args.pairs:,} "
        "loopback sockets",
        "",
        f"Median of {args.repeat} runs after one warm-up. "
        f"{datetime.date.today().isoformat()}, Linux {platform.release()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"psutil {psutil.__version__ if psutil else 'n/a'}, "
        f"pysockkit {sk.__version__}. "
        f"{total:,} TCP sockets were in the network namespace at the start "
        f"(RLIMIT_NOFILE {limits[0]}); load average {load[0]:.1f} "
        f"over {os.cpu_count()} CPUs at the end.",
    ]

    def table(title: str, rows: list[Row]) -> None:
        base, base_cpu = rows[0][1], rows[0][2]
        lines.extend(["", f"## {title}", "",
                      "| contender | wall (median) | CPU (median) | entries "
                      f"| wall / {rows[0][0]} | CPU / {rows[0][0]} | note |",
                      "|---|---:|---:|---:|---:|---:|---|"])
        for name, wall, cpu_s, count, note in rows:
            if wall is None or cpu_s is None or base is None or base_cpu is None:
                lines.append(f"| `{name}` | - | - | - | - | - | {note} |")
            else:
                lines.append(f"| `{name}` | {fmt_ms(wall)} | {fmt_ms(cpu_s)} | {count:,} | "
                             f"{wall / base:,.1f}× | {cpu_s / base_cpu:,.1f}× | {note} |")

    table("Full listing", full)
    table("The connections of one port P (5 pairs among all the others)", one_port)
    lines += [
        "",
        "Ratios above 1 mean slower than the first row of the table.  CPU is user "
        "+ system time of the process (and, for ss, of the child), so it is less "
        "sensitive than wall time to other load on the machine.  psutil also "
        "maps every socket to its process by reading each /proc/PID/fd link; "
        "sk.sockets() reports the socket's inode and uid instead (no pid).  "
        "ss includes starting a process.  Reproduce with "
        f"`python bench/sockets_bench.py --pairs {args.pairs} --repeat {args.repeat}`.",
    ]
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    for rows in (full, one_port):
        ps = next((r for r in rows if r[0].startswith("psutil")), None)
        base, base_cpu = rows[0][1], rows[0][2]
        if ps and ps[1] is not None and ps[2] is not None and base and base_cpu:
            print(f"{rows[0][0]} is {ps[1] / base:.1f}x faster than psutil in wall "
                  f"time, {ps[2] / base_cpu:.1f}x in CPU time (target: 10x)")
    if args.out != "-":
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
