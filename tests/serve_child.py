"""An ``sk.serve`` echo server in its own process, for the hardening tests
(tests/test_malformed.py, tests/test_leaks.py) and bench/load.py.

    python serve_child.py [--mode serve|hold] [--header-size H] [--max-frame N]
                          [--max-seconds S] [--read-timeout S]
                          [--write-timeout S] [--max-connections N]
                          [--workers N]

--mode serve (the default) runs ``sk.serve`` (echo, on the C reactor,
with --workers handler threads: 1 by default, 0 on the reactor's thread);
--mode hold runs one thread that accepts each client, echoes its first
frame and keeps the connection open until the ``release`` command (10,000
long connections without 10,000 threads).

Prints ``port N`` once listening on 127.0.0.1, then answers commands read
from stdin, one per line, with one JSON line on stdout:

  stats   {"rss_kib", "heap_bytes", "fds", "threads", "conns", "served", "rejected",
           "errors": {type: count}, "details": [[type, missing or size], ...
           for the last 200 errors], "first_errors": [messages],
           "exits": {reason: count} (sk.ServerExits; {} in hold mode)}
  ports   stats, plus "ports": [the peer port of each connection held, -1
           if the peer was gone before it could be read] (a command of its
           own: a caller that keeps the stats of 10,000 connections should
           not hold 10,000 port numbers)
  trim    malloc_trim(0), then stats (glibc keeps freed memory otherwise)
  release (hold mode) close every held connection, then stats
  quit    close the server (joins its threads) and exit 0

A separate process keeps the server's memory, descriptors and threads
apart from the test's own, so they can be measured (and 10,000 client
sockets fit under RLIMIT_NOFILE).  The process exits on EOF of stdin or
after --max-seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import sys
import threading
import weakref

import pysockkit as sk
from hardening import c_heap_bytes


class Holder:
    """Accept, echo the first frame, keep the connection (hold mode)."""

    def __init__(self, lst: sk.Listener) -> None:
        self.lst = lst
        self.lock = threading.Lock()
        self.held: list[sk.Connection] = []
        self.errors: list[BaseException] = []
        self.served = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.lst.address

    @property
    def _conns(self) -> list[sk.Connection]:
        return self.held

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.lst.accept(timeout=0.1)
            except sk.Timeout:
                continue
            except sk.Error:
                return
            try:
                conn.send(conn.recv(timeout=10), timeout=10)
                self.served += 1
                with self.lock:
                    self.held.append(conn)
            except sk.Error as exc:
                self.errors.append(exc)
                conn.close()

    def release(self) -> None:
        with self.lock:
            held, self.held = self.held, []
        for c in held:
            c.close()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        self.lst.close()
        self.release()


# peer ports, learnt while the peer is still connected: getpeername fails
# once a peer reset its connection, but the server may still hold it
_PEER_PORTS: "weakref.WeakKeyDictionary[sk.Connection, int]" = weakref.WeakKeyDictionary()


def peer_ports(conns: list[sk.Connection]) -> list[int]:
    out = []
    for c in conns:
        port = _PEER_PORTS.get(c)
        if port is None:
            try:
                port = _PEER_PORTS[c] = c.remote_address[1]
            except OSError:
                port = -1
        out.append(port)
    return sorted(out)


def stats(srv: "sk.Server | Holder", ports: bool = False) -> dict:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    # the connections first: one that is gone by now had its end recorded
    # (sk.serve records it before letting go), so the errors and exits read
    # next include it
    conns = list(srv._conns)
    extra = {"ports": peer_ports(conns)} if ports else {}
    errors = list(srv.errors)
    exits = dict(vars(srv.exits)) if isinstance(srv, sk.Server) else {}
    return extra | {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "heap_bytes": c_heap_bytes(),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(status["Threads"]),
        "conns": len(conns),
        "exits": exits,
        "served": srv.served,
        "rejected": getattr(srv, "rejected", 0),
        "errors": dict(collections.Counter(type(e).__name__ for e in errors)),
        "details": [
            [type(e).__name__, getattr(e, "missing", getattr(e, "size", None))] for e in errors[-200:]
        ],
        "first_errors": [f"{type(e).__name__}: {e}" for e in errors[:5]],
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["serve", "hold"], default="serve")
    p.add_argument("--header-size", type=int, default=4)
    p.add_argument("--max-frame", type=int, default=16 * 2**20)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--read-timeout", type=float, default=None)
    p.add_argument("--write-timeout", type=float, default=None)
    p.add_argument("--max-connections", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    framing = sk.Framing(header_size=a.header_size, max_frame=a.max_frame)
    srv: "sk.Server | Holder"
    if a.mode == "hold":
        srv = Holder(sk.listen(("127.0.0.1", 0), framing=framing, backlog=4096))
    else:
        srv = sk.serve(("127.0.0.1", 0), framing=framing, backlog=4096, read_timeout=a.read_timeout,
                       write_timeout=a.write_timeout, max_connections=a.max_connections,
                       workers=a.workers)
    timer = threading.Timer(a.max_seconds, lambda: os._exit(3))
    timer.daemon = True
    timer.start()
    try:
        print(f"port {srv.address[1]}", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                break
            if cmd == "release" and isinstance(srv, Holder):
                srv.release()
            if cmd in ("trim", "release"):
                ctypes.CDLL(None).malloc_trim(0)
            print(json.dumps(stats(srv, ports=cmd == "ports")), flush=True)
    finally:
        srv.close(timeout=10.0)
        timer.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
