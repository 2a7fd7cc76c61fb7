"""A framed echo server that runs until Ctrl-C (or --seconds).

Run: python examples/echo_server.py [PORT] [--seconds N]
It prints "listening on HOST:PORT" once ready.
"""

import argparse
import time

import pysockkit as sk

p = argparse.ArgumentParser()
p.add_argument("port", type=int, nargs="?", default=0)
p.add_argument("--seconds", type=float, default=None)
args = p.parse_args()

with sk.serve(("127.0.0.1", args.port)) as server:
    host, port = server.address
    try:  # from the "listening" line on, Ctrl-C is a clean stop
        print(f"listening on {host}:{port}", flush=True)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    print(f"served {server.served} messages", flush=True)
