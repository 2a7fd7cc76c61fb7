"""The receiving program of an asynchronous simplex pair: a simplex.Server.

Requests arrive on the request link; each reply goes back on the client's
reply link, tagged with the request's correlation id.  Run it, then
``examples/simplex_sender.py`` in another terminal:

    python examples/simplex_receiver.py --seconds 60
    python examples/simplex_sender.py 127.0.0.1:REQ_PORT 127.0.0.1:REPLY_PORT -n 1000

Once ready it prints one line:
    simplex receiver ready: request link 127.0.0.1:PORT reply link 127.0.0.1:PORT
and stops on Ctrl-C / SIGTERM or after --seconds (default 30), printing its
counters.  The reply is ``b"echo:" + request``; ``--delay`` makes each
request take that long (to see replies come back out of order, or to keep
requests pending in tests).
"""

from __future__ import annotations

import argparse
import logging
import signal
import time

import pysockkit as sk
from pysockkit import simplex

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--request-port", type=int, default=0)
p.add_argument("--reply-port", type=int, default=0)
p.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
p.add_argument("--delay", type=float, default=0.0, help="seconds of work per request")
p.add_argument("--workers", type=int, default=2, help="handler threads (0: inline)")
p.add_argument("--heartbeat", type=float, default=None, metavar="INTERVAL",
               help="heartbeats with this interval (timeout 3x); the sender must match")
args = p.parse_args()
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")


def handler(request: bytes) -> bytes:
    if args.delay:
        time.sleep(args.delay)
    return b"echo:" + request


stop = False


def on_signal(signum: int, frame: object) -> None:
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

hb = None if args.heartbeat is None else sk.Heartbeat(args.heartbeat, 3 * args.heartbeat)
with simplex.Server((args.host, args.request_port), (args.host, args.reply_port), handler,
                    heartbeat=hb, workers=args.workers) as srv:
    rq, rp = srv.request_address, srv.reply_address
    print(f"simplex receiver ready: request link {rq[0]}:{rq[1]} reply link {rp[0]}:{rp[1]}",
          flush=True)
    deadline = time.monotonic() + args.seconds
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    s = srv.stats
print(f"simplex receiver stopped: {s.sessions_total} sessions, {s.requests} requests, "
      f"{s.replies} replies, {s.dropped} dropped, {s.rejected} rejected", flush=True)
