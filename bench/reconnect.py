#!/usr/bin/env python3
"""Restart to first reply: a server process is killed (SIGKILL) and started
again on the same port, 20 times; two clients keep asking it for an echo
all along, and we measure, per restart, the time from the new server's
"listening" to each client's first reply.

* ``pysockkit``: ``sk.connect(addr, reconnect=sk.Reconnect(...))`` and
  ``conn.request(b"x", timeout=0.5)`` in a loop (the supervisor thread
  reconnects in the background, the request waits for it);
* ``stdlib``: a hand-written reconnect loop on blocking ``socket`` with the
  same backoff (first retry at once, then initial × multiplier^n up to
  maximum, ± jitter), the same framing (4-byte big-endian length).

    python bench/reconnect.py [--restarts 20] [--down 1.0] [--up 0.4] [--out FILE]

PYSOCKKIT_BENCH_SMOKE=1 cuts it to 3 restarts (tests/run_all.sh).  Both
clients run at once in this process, each in its own thread; the server
is tests/reconnect_peer.py.  Bounded: every wait has a deadline, the
server process is killed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import pysockkit as sk  # noqa: E402

PEER = os.path.join(ROOT, "tests", "reconnect_peer.py")
POLICY = sk.Reconnect(initial=0.1, maximum=1.0, multiplier=1.6, jitter=0.2)
PAUSE = 0.005  # between two successful requests
_HDR = struct.Struct(">I")


class Server:
    def __init__(self, port: int = 0) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen([sys.executable, PEER, str(port), "--max-seconds", "600"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["port"]:
            raise RuntimeError(f"server did not start: {line}")
        self.ready = time.monotonic()
        self.port = int(line[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


class Client(threading.Thread):
    """Asks for echoes in a loop; ``replies`` holds the time of each reply
    that followed a failure (the first reply after an outage)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = threading.Event()
        self.firsts: list[float] = []
        self.failed = True  # no reply yet

    def got(self) -> None:
        if self.failed:
            self.firsts.append(time.monotonic())
            self.failed = False


class PysockkitClient(Client):
    def __init__(self, port: int) -> None:
        super().__init__("pysockkit")
        self.conn = sk.connect(("127.0.0.1", port), timeout=10, reconnect=POLICY)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.conn.request(b"x", timeout=0.5)
            except sk.Error:
                self.failed = True
                continue
            self.got()
            time.sleep(PAUSE)
        self.conn.close()


class StdlibClient(Client):
    """The loop every application writes by hand."""

    def __init__(self, port: int) -> None:
        super().__init__("stdlib")
        self.addr = ("127.0.0.1", port)
        self.sock: Optional[socket.socket] = None
        self.attempt = 0
        self.current = POLICY.initial
        self.rng = random.Random()

    def delay(self) -> float:
        d = min(self.current, POLICY.maximum)
        self.current = min(self.current * POLICY.multiplier, POLICY.maximum)
        return d * (1 + self.rng.uniform(-POLICY.jitter, POLICY.jitter))

    def request(self, sock: socket.socket) -> bytes:
        sock.sendall(_HDR.pack(1) + b"x")
        buf = b""
        while len(buf) < 5:
            chunk = sock.recv(5 - len(buf))
            if not chunk:
                raise ConnectionError("peer closed")
            buf += chunk
        return buf[4:]

    def run(self) -> None:
        up_since = 0.0
        while not self.stop.is_set():
            if self.sock is None:
                if self.attempt > 0:
                    self.stop.wait(self.delay())
                self.attempt += 1
                try:
                    s = socket.create_connection(self.addr, timeout=POLICY.connect_timeout)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.settimeout(0.5)
                    self.sock = s
                    up_since = time.monotonic()
                except OSError:
                    self.failed = True
                    continue
            try:
                self.request(self.sock)
            except OSError:
                self.failed = True
                self.sock.close()
                self.sock = None
                if time.monotonic() - up_since >= 1.0:  # was up: start over
                    self.attempt = 0
                    self.current = POLICY.initial
                continue
            self.got()
            time.sleep(PAUSE)
        if self.sock is not None:
            self.sock.close()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--down", type=float, default=1.0, help="seconds the server stays down")
    ap.add_argument("--up", type=float, default=0.4,
                    help="seconds the server stays up between kills (about)")
    ap.add_argument("--out", default=None, help="also write the report (markdown) here")
    a = ap.parse_args()
    if os.environ.get("PYSOCKKIT_BENCH_SMOKE"):
        a.restarts = min(a.restarts, 3)
    srv = Server()
    port = srv.port
    clients: list[Client] = [PysockkitClient(port), StdlibClient(port)]
    for c in clients:
        c.start()
    samples: dict[str, list[float]] = {c.name: [] for c in clients}
    try:
        deadline = time.monotonic() + 10
        while any(c.failed for c in clients) and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(a.restarts):
            # up for --up s (± 0.1): under 1 s the backoff schedule goes on
            # from the last outage (a short-lived connection does not reset it)
            time.sleep(max(0.0, a.up - 0.1 + random.random() * 0.2))
            srv.kill()
            time.sleep(a.down)
            srv = Server(port)
            deadline = time.monotonic() + 30
            while any(c.failed or not c.firsts or c.firsts[-1] < srv.ready for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"restart {i}: a client got no reply within 30 s")
                time.sleep(0.01)
            for c in clients:
                samples[c.name].append(c.firsts[-1] - srv.ready)
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(10)
        srv.kill()
    rows = []
    for name, xs in samples.items():
        ms = [x * 1000 for x in xs]
        rows.append(f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {pct(ms, 99):.0f} | "
                    f"{min(ms):.0f} | {max(ms):.0f} |")
    report = "\n".join([
        "# Restart to first reply",
        "",
        f"`python bench/reconnect.py --restarts {a.restarts} --down {a.down} --up {a.up}` on "
        f"{time.strftime('%Y-%m-%d')}, Linux {platform.release()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs (shared).  Server killed "
        f"(SIGKILL), down {a.down} s, restarted on the same port; backoff "
        f"{POLICY.initial} s × {POLICY.multiplier} up to {POLICY.maximum} s, ±"
        f"{POLICY.jitter:.0%}, the same for both clients.",
        "",
        "| client | restarts | median ms | p99 ms | min ms | max ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
