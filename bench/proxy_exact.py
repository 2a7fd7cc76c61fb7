#!/usr/bin/env python3
"""How exact the FaultProxy's faults are: configured vs measured, one run.

    python bench/proxy_exact.py [--quick] [--out FILE]

Plain blocking sockets on loopback (a sender thread, a reader in this
thread) through a :class:`pysockkit.FaultProxy`, toxiproxy's units:

- bandwidth: ``rate`` KB/s from 10 KB/s to 100 MB/s; measured = bytes /
  (time of the last byte - time the send started).  Target: within 2 %.
- latency: 1 MB through 50 ms downstream latency, against the same
  transfer straight to the server.  Target: <= 60 ms + the direct time
  (latency delays bytes; it does not ration them).
- slicer: 1-byte slices ``delay`` us apart (10 us .. 1 ms); measured =
  mean interval between slices = (last byte - first byte) / (slices - 1).
- reset_peer: ``timeout`` 100 ms on a connection idle for 300 ms first
  (no reset: toxiproxy times it from the first data), then from the first
  byte to the RST.

Each row prints configured, measured and the error.  The numbers are as
good as the machine is quiet: a loaded machine makes wake-ups late, which
bandwidth and slicer carry forward (their average stays exact) but a
single latency or reset cannot.  ``--quick`` (or PYSOCKKIT_BENCH_SMOKE=1,
as tests/docblocks.py sets) uses short transfers.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pysockkit as sk  # noqa: E402


def _pair(proxy: bool) -> tuple[socket.socket, socket.socket, sk.FaultProxy | None, socket.socket]:
    """(client, server, proxy, listener): client -> [proxy ->] server."""
    ls = socket.create_server(("127.0.0.1", 0))
    px = sk.FaultProxy(ls.getsockname()) if proxy else None
    cli = socket.create_connection(px.address if px else ls.getsockname(), timeout=10)
    srv, _ = ls.accept()
    srv.settimeout(10)
    if px is not None:
        px.wait_connections(1, timeout=10)
    return cli, srv, px, ls


def _close(*objs: object) -> None:
    for o in objs:
        if o is not None:
            o.close()  # type: ignore[attr-defined]


def _transfer(src: socket.socket, dst: socket.socket, n: int) -> tuple[float, float, float]:
    """Send n bytes src -> dst; (start, first byte, last byte) times."""
    payload = bytes(n)
    t0 = time.monotonic()
    th = threading.Thread(target=src.sendall, args=(payload,))
    th.start()
    buf = bytearray(1 << 20)
    got, first = 0, 0.0
    while got < n:
        k = dst.recv_into(buf)
        if k == 0:
            raise RuntimeError("closed early")
        if got == 0:
            first = time.monotonic()
        got += k
    t_end = time.monotonic()
    th.join()
    return t0, first, t_end


def bench_bandwidth(rows: list[tuple[str, str, str, str]], quick: bool) -> None:
    for kbps in (10, 100, 1_000, 10_000, 100_000):
        secs = 0.2 if quick else (1.0 if kbps < 100_000 else 0.5)
        n = int(kbps * 1000 * secs)
        cli, srv, px, ls = _pair(True)
        assert px is not None
        try:
            px.add("bandwidth", rate=kbps)
            t0, _, t1 = _transfer(srv, cli, n)
        finally:
            _close(cli, srv, px, ls)
        measured = n / (t1 - t0) / 1000
        rows.append((f"bandwidth rate={kbps} KB/s ({n} bytes)", f"{kbps} KB/s",
                     f"{measured:.1f} KB/s", f"{(measured / kbps - 1) * 100:+.2f} %"))


def bench_latency(rows: list[tuple[str, str, str, str]]) -> None:
    n = 1_000_000
    cli, srv, _, ls = _pair(False)
    try:
        t0, _, t1 = _transfer(srv, cli, n)
        direct = t1 - t0
    finally:
        _close(cli, srv, ls)
    cli, srv, px, ls = _pair(True)
    assert px is not None
    try:
        px.add("latency", latency=50)
        t0, _, t1 = _transfer(srv, cli, n)
        proxied = t1 - t0
        # one small message: the added delay itself
        t2 = time.monotonic()
        srv.sendall(b"x")
        cli.recv(1)
        one = time.monotonic() - t2
    finally:
        _close(cli, srv, px, ls)
    rows.append(("latency=50 ms, 1 byte", "50.0 ms", f"{one * 1000:.1f} ms",
                 f"{(one * 1000 - 50):+.2f} ms"))
    rows.append((f"latency=50 ms, 1 MB (direct {direct * 1000:.1f} ms)",
                 f"<= {60 + direct * 1000:.1f} ms", f"{proxied * 1000:.1f} ms",
                 f"{(proxied - direct) * 1000 - 50:+.1f} ms over 50 + direct"))


def bench_slicer(rows: list[tuple[str, str, str, str]], quick: bool) -> None:
    for us in (10, 20, 50, 100, 1000):
        slices = max(50, min(20_000, int((0.1 if quick else 0.3) / (us * 1e-6))))
        cli, srv, px, ls = _pair(True)
        assert px is not None
        try:
            px.add("slicer", average_size=1, delay=us)
            _, first, last = _transfer(srv, cli, slices)
        finally:
            _close(cli, srv, px, ls)
        interval = (last - first) / (slices - 1) * 1e6
        rows.append((f"slicer delay={us} us ({slices} slices)", f"{us} us",
                     f"{interval:.1f} us", f"{(interval / us - 1) * 100:+.1f} %"))


def bench_reset(rows: list[tuple[str, str, str, str]]) -> None:
    cli, srv, px, ls = _pair(True)
    assert px is not None
    try:
        px.add("reset_peer", timeout=100)
        time.sleep(0.3)
        idle_ok = px.stats.resets == 0
        t0 = time.monotonic()
        srv.sendall(b"first")
        cli.settimeout(5)
        try:
            while cli.recv(100):
                pass
            took = float("nan")
        except ConnectionResetError:
            took = time.monotonic() - t0
    finally:
        _close(cli, srv, px, ls)
    rows.append(("reset_peer timeout=100 ms (idle 300 ms first: "
                 f"{'not reset' if idle_ok else 'RESET'})", "100.0 ms",
                 f"{took * 1000:.1f} ms", f"{took * 1000 - 100:+.2f} ms"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter transfers")
    ap.add_argument("--out", help="also write the table as markdown here")
    args = ap.parse_args()
    # tests/docblocks.py runs bench/README.md's commands with this set: then
    # only show that every row runs
    args.quick = args.quick or bool(os.environ.get("PYSOCKKIT_BENCH_SMOKE"))
    rows: list[tuple[str, str, str, str]] = []
    bench_bandwidth(rows, args.quick)
    bench_latency(rows)
    bench_slicer(rows, args.quick)
    bench_reset(rows)
    head = ("fault", "configured", "measured", "error")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(
            f"# FaultProxy exactness\n\n`python bench/proxy_exact.py`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
