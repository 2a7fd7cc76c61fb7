"""A heartbeating peer run as a separate process by tests/test_heartbeat.py.

    python hb_peer.py ROLE HOST PORT INTERVAL TIMEOUT

ROLE:
  echo     connect, answer every frame with the same frame
  idle     connect, never call anything (only the C hub keeps beating)
  busy     connect, burn CPU in pure Python (the hub must beat without the GIL)
  ROLE-plain  the same without heartbeats
  noread   connect, do not read for --noread-seconds (or, with
           --read-on-stdin, until a line arrives on stdin), then read and
           report the number of bytes and frames received until the peer
           closes
  server   listen on HOST:PORT (0: any), print the port, accept one client,
           then block in recv and report what ended it (used in netns)

Prints "ready" (or "port N") on stdout once connected, then results as
"key value" lines.  Every role is bounded by --max-seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import select
import sys
import time

import pysockkit as sk


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("interval", type=float)
    p.add_argument("timeout", type=float)
    p.add_argument("--noread-seconds", type=float, default=2.0)
    p.add_argument("--read-on-stdin", action="store_true")
    p.add_argument("--max-seconds", type=float, default=30.0)
    a = p.parse_args()
    hb = sk.Heartbeat(a.interval, a.timeout)
    end = time.monotonic() + a.max_seconds

    if a.role == "server":
        with sk.listen((a.host, a.port), heartbeat=hb) as srv:
            print("port", srv.address[1], flush=True)
            with srv.accept(timeout=a.max_seconds) as conn:
                print("ready", flush=True)
                t0 = time.monotonic()
                try:
                    conn.recv(timeout=a.max_seconds)
                    print("result frame", flush=True)
                except sk.PeerDead:
                    print("result PeerDead", round(time.monotonic() - t0, 3), flush=True)
                except sk.Error as exc:
                    print("result", type(exc).__name__, flush=True)
        return 0

    plain = a.role.endswith("-plain")
    role = a.role[: -len("-plain")] if plain else a.role
    conn = sk.connect((a.host, a.port), timeout=5.0, heartbeat=None if plain else hb)
    print("ready", flush=True)
    try:
        if role == "echo":
            while time.monotonic() < end:
                try:
                    msg = conn.recv(timeout=max(0.0, end - time.monotonic()))
                except sk.ConnectionClosed:
                    break
                conn.send(msg)
        elif role == "idle":
            time.sleep(max(0.0, end - time.monotonic()))
        elif role == "busy":
            x = 0
            while time.monotonic() < end:
                for i in range(100_000):
                    x += i * i
        elif role == "noread":
            if a.read_on_stdin:  # the test says when: no race with its sends
                select.select([sys.stdin], [], [], max(0.0, end - time.monotonic()))
            else:
                time.sleep(a.noread_seconds)
            digest = hashlib.sha256()
            n = frames = 0
            while time.monotonic() < end:
                try:
                    msg = conn.recv(timeout=max(0.0, end - time.monotonic()))
                except sk.ConnectionClosed:
                    break
                digest.update(msg)
                n += len(msg)
                frames += 1
            print("bytes", n, flush=True)
            print("frames", frames, flush=True)
            print("sha256", digest.hexdigest(), flush=True)
        else:
            print("unknown role", a.role, file=sys.stderr)
            return 2
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
