"""The sending program of an asynchronous simplex pair: a simplex.Client.

Sends N requests on the request link, many in flight, and collects the
replies that come back on the reply link, matched by correlation id:

    python examples/simplex_sender.py REQUEST_HOST:PORT REPLY_HOST:PORT -n 1000

(the addresses printed by ``examples/simplex_receiver.py``).  Prints a few
replies, whether every reply matched its request, and the client's counters;
exits 1 if a request failed.  Every wait is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import sys
import time

import pysockkit as sk
from pysockkit import simplex


def addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("request_addr", type=addr, help="HOST:PORT of the request link")
p.add_argument("reply_addr", type=addr, help="HOST:PORT of the reply link")
p.add_argument("-n", "--requests", type=int, default=1000)
p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
p.add_argument("--heartbeat", type=float, default=None, metavar="INTERVAL")
args = p.parse_args()

hb = None if args.heartbeat is None else sk.Heartbeat(args.heartbeat, 3 * args.heartbeat)
t0 = time.monotonic()
with simplex.Client(args.request_addr, args.reply_addr, heartbeat=hb,
                    connect_timeout=args.timeout) as cli:
    print(f"simplex sender: session {cli.session[:8]}, request link "
          f"{cli.request_link.state.name}, reply link {cli.reply_link.state.name}", flush=True)
    futs = [cli.request_async(b"request %d" % i, timeout=args.timeout)
            for i in range(args.requests)]
    failed = matched = 0
    for i, fut in enumerate(futs):
        try:
            reply = fut.result()
        except sk.Error as exc:
            failed += 1
            if failed <= 3:
                print(f"request {i} failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        matched += reply == b"echo:request %d" % i
        if i < 3:
            print(f"reply {i}: {reply!r}", flush=True)
    elapsed = time.monotonic() - t0
    s = cli.stats
print(f"{matched} of {args.requests} replies matched their requests in {elapsed:.2f} s; "
      f"{failed} failed", flush=True)
print(f"stats: sent={s.sent} replied={s.replied} late={s.late} unknown={s.unknown} "
      f"duplicate={s.duplicate} timed_out={s.timed_out} failed={s.failed}", flush=True)
sys.exit(0 if matched == args.requests else 1)
