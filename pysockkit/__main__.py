"""Command line: ``python -m pysockkit {tour,serve,ping}``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Optional, Sequence

from ._conn import Address


def _addr(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _cmd_tour(args: argparse.Namespace) -> int:
    from . import _tour

    return _tour.run()


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._server import serve

    with serve(args.address) as srv:
        print(f"echo server on {srv.address[0]}:{srv.address[1]}; Ctrl-C stops it", flush=True)
        try:
            signal.pause() if args.seconds is None else time.sleep(args.seconds)
        except KeyboardInterrupt:
            pass
        print(f"served {srv.served} messages")
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    from ._conn import connect
    from ._errors import Error

    try:
        with connect(args.address, timeout=args.timeout) as conn:
            rtts = []
            for i in range(args.count):
                t0 = time.perf_counter()
                conn.request(b"ping %d" % i, timeout=args.timeout)
                rtts.append((time.perf_counter() - t0) * 1e6)
    except Error as exc:
        print(f"ping failed: {exc}", file=sys.stderr)
        return 1
    rtts.sort()
    print(f"{len(rtts)} requests to {args.address[0]}:{args.address[1]}: "
          f"min {rtts[0]:.1f} us, median {rtts[len(rtts) // 2]:.1f} us, max {rtts[-1]:.1f} us")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pysockkit``."""
    p = argparse.ArgumentParser(prog="python -m pysockkit", description="framed TCP toolkit")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("tour", help="guided run on loopback showing every feature")
    s.set_defaults(func=_cmd_tour)
    s = sub.add_parser("serve", help="run an echo server")
    s.add_argument("address", type=_addr, nargs="?", default=("127.0.0.1", 9000))
    s.add_argument("--seconds", type=float, default=None, help="stop after this long")
    s.set_defaults(func=_cmd_serve)
    s = sub.add_parser("ping", help="send framed requests to an echo server, print round trips")
    s.add_argument("address", type=_addr)
    s.add_argument("-n", "--count", type=int, default=10)
    s.add_argument("--timeout", type=float, default=2.0)
    s.set_defaults(func=_cmd_ping)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
