#!/usr/bin/env python3
"""Where one exchange of rtt-64 or short-conn goes: syscalls and CPU per
operation, one side at a time, against the C reference's other side.

    python bench/profile_exchange.py [--scen shortconn,rtt64] [--count 20000]
                                     [--impl c,floor,sk] [--repeat 3]

For each scenario, each implementation and each role (server, client), the
measured side runs under ``perf stat`` with the kernel's syscall
tracepoints, and again --repeat times under ``task-clock`` alone (the
tracepoints slow every syscall), against bench/cref.c on the other side:
shortconn with the server on CPU 0 and the client on CPU 1, as bench/run.py
does; rtt64 with both on CPU 0, as its target's row (there one round trip
is the CPU time of both sides plus two context switches).  The report
gives, per operation (a connection for shortconn, a round trip for rtt64):
every syscall made 0.05 times or more, their total, and the CPU time of
the measured process (user and kernel: the kernel's TCP work included, so
C's figure is the floor of the machine), median with min and max; the
process's start-up is spread over --count operations.

``c`` is cref.c itself, ``floor`` the CPython floor of contenders.py (the
least a CPython program does per exchange), ``sk`` pysockkit
(Listener.accept/recv/send/close and sk.call for shortconn; recv/send and
Connection.request for rtt64).  It explains the two speed targets of
bench/run.py that pysockkit misses (see RESULTS.md): what it does beyond
the floor, syscall by syscall.  Needs perf with tracepoint access (root),
taskset and cc; every process it starts is waited for, or killed by pid.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONTENDERS = os.path.join(HERE, "contenders.py")
TIMEOUT_S = 120.0


def side_cmd(impl: str, role: str, cref: str) -> list[str]:
    if impl == "c":
        return [cref, role]
    return [sys.executable, CONTENDERS, impl, role]


def wait_ready(proc: subprocess.Popen) -> str:
    """The port from the server's READY line (bounded by TIMEOUT_S)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = proc.stdout.readline()
    if not line.startswith("READY") or time.monotonic() > deadline:
        raise RuntimeError(f"server did not start: {line!r}")
    return line.split()[1]


def perf_counts(path: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or not parts[0].replace(".", "", 1).isdigit():
                continue
            out[parts[2]] = float(parts[0])
    return out


# the syscalls an exchange makes, counted one by one; raw_syscalls counts all
# of them (the rest is reported as "other")
SYSCALLS = ("socket", "connect", "accept4", "setsockopt", "getsockopt", "fcntl",
            "poll", "ppoll", "epoll_wait", "recvfrom", "recvmsg", "read", "sendto",
            "sendmsg", "write", "writev", "shutdown", "close")


def trial(scen: str, impl: str, role: str, count: int, cref: str, tmp: str,
          syscalls: bool) -> dict[str, float]:
    """One run: the measured side (impl, role) under perf stat; per op,
    task-clock (us) or, with syscalls, the syscall counts (tracepoints slow
    every syscall down, so the CPU time of such a run is not reported)."""
    stat = os.path.join(tmp, "stat.csv")
    perf = ["perf", "stat", "-x,", "-o", stat, "-e", "task-clock"]
    if syscalls:
        perf += ["-e", "raw_syscalls:sys_enter"]
        perf += ["-e", ",".join(f"syscalls:sys_enter_{n}" for n in SYSCALLS)]
    measured_server = role == "server"
    srv_cmd = side_cmd(impl if measured_server else "c", "server", cref) + [scen, str(count)]
    if measured_server:
        srv_cmd = perf + ["--"] + srv_cmd
    srv = subprocess.Popen(["taskset", "-c", "0"] + srv_cmd, stdout=subprocess.PIPE, text=True)
    cli = None
    try:
        port = wait_ready(srv)
        cli_cpu = "0" if scen == "rtt64" else "1"  # rtt64: the one-CPU row
        cli_cmd = side_cmd("c" if measured_server else impl, "client", cref) + [scen, str(count), port]
        if not measured_server:
            cli_cmd = perf + ["--"] + cli_cmd
        cli = subprocess.Popen(["taskset", "-c", cli_cpu] + cli_cmd, stdout=subprocess.DEVNULL)
        cli.wait(timeout=TIMEOUT_S)
        srv.wait(timeout=TIMEOUT_S)
        if cli.returncode != 0 or srv.returncode != 0:
            raise RuntimeError(f"{impl} {role} {scen}: exit {srv.returncode}/{cli.returncode}")
    finally:
        for p in (cli, srv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if srv.stdout is not None:
            srv.stdout.close()
    raw = perf_counts(stat)
    if not syscalls:
        return {"cpu_us": raw.get("task-clock", 0.0) * 1000.0 / count}  # task-clock: ms
    per = {k.replace("syscalls:sys_enter_", ""): v / count
           for k, v in raw.items() if k.startswith("syscalls:")}
    total = raw.get("raw_syscalls:sys_enter", 0.0) / count
    per["other"] = max(0.0, total - sum(per.values()))
    per["total"] = total
    return per


def build_cref(tmp: str) -> str:
    exe = os.path.join(tmp, "cref")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe,
                    os.path.join(HERE, "cref.c")], check=True)
    return exe


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scen", default="shortconn,rtt64")
    ap.add_argument("--impl", default="c,floor,sk")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    unit = {"shortconn": "connection", "rtt64": "round trip"}
    with tempfile.TemporaryDirectory() as tmp:
        cref = build_cref(tmp)
        for scen in args.scen.split(","):
            where = "both on CPU 0" if scen == "rtt64" else "server CPU 0, client CPU 1"
            print(f"\n### {scen}: per {unit[scen]}, one side measured, the C reference on the "
                  f"other ({where}; CPU: median of {args.repeat} x {args.count})\n")
            for role in ("server", "client"):
                rows = {}
                for impl in args.impl.split(","):
                    cpu = [trial(scen, impl, role, args.count, cref, tmp, False)["cpu_us"]
                           for _ in range(args.repeat)]
                    rows[impl] = trial(scen, impl, role, args.count, cref, tmp, True)
                    rows[impl]["cpu_us"] = statistics.median(cpu)
                    rows[impl]["cpu_range"] = (min(cpu), max(cpu))
                names = [n for n in SYSCALLS + ("other",)
                         if any(r.get(n, 0.0) >= 0.05 for r in rows.values())]
                print(f"| {role} | " + " | ".join(rows) + " |")
                print("|" + "|".join(["---"] + ["---:"] * len(rows)) + "|")
                print("| CPU us (user+kernel), median (min-max) | " + " | ".join(
                    f"{r['cpu_us']:.2f} ({r['cpu_range'][0]:.2f}-{r['cpu_range'][1]:.2f})"
                    for r in rows.values()) + " |")
                print("| syscalls | " + " | ".join(f"{r['total']:.2f}" for r in rows.values()) + " |")
                for n in names:
                    print(f"| {n} | " + " | ".join(f"{r.get(n, 0.0):.2f}" for r in rows.values()) + " |")
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
