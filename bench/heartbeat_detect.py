#!/usr/bin/env python3
"""Dead-peer detection times: a heartbeating peer process is killed
(SIGKILL) or frozen (SIGSTOP) while we block in recv; prints how long the
recv took to raise, and what it raised.

    python bench/heartbeat_detect.py [--runs 5]

Bounded: each run waits at most 30 s; every peer process is killed after.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import pysockkit as sk  # noqa: E402

PEER = os.path.join(ROOT, "tests", "hb_peer.py")


def measure(kind: str, interval: float, timeout: float) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    with sk.listen(("127.0.0.1", 0), heartbeat=sk.Heartbeat(interval, timeout)) as srv:
        p = subprocess.Popen(
            [sys.executable, PEER, "idle", "127.0.0.1", str(srv.address[1]), str(interval),
             str(timeout), "--max-seconds", "30"],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        try:
            with srv.accept(timeout=10) as conn:
                assert p.stdout is not None
                p.stdout.readline()
                time.sleep(2 * interval)
                t0 = time.monotonic()
                p.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
                try:
                    conn.recv(timeout=30)
                    return float("nan"), "a frame?"
                except sk.Error as exc:
                    return time.monotonic() - t0, type(exc).__name__
        finally:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    for interval, timeout in ((0.2, 0.6), (1.0, 3.0)):
        for kind in ("kill", "stop"):
            res = [measure(kind, interval, timeout) for _ in range(a.runs)]
            ts = [r[0] for r in res]
            print(f"Heartbeat({interval}, {timeout}) SIG{kind.upper()}: median "
                  f"{statistics.median(ts) * 1e3:.1f} ms, max {max(ts) * 1e3:.1f} ms, "
                  f"raised {sorted(set(r[1] for r in res))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
