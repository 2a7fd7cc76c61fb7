"""A server run as a separate process by tests/test_reconnect.py and
bench/reconnect.py, so that it can be killed, frozen and restarted on the
same port.

    python reconnect_peer.py PORT [--mode echo|slam|aio] [--heartbeat I T]
                             [--max-seconds S]

--mode echo (default): accept every client (a thread each) and answer every
frame with the same frame.  --mode slam: accept every client and close it at
once, counting the accepts.  --mode aio: an ``aio.serve`` echo server (one
task a client: thousands of clients cost no thread each).  Prints "port N" once listening on 127.0.0.1
(PORT 0 picks one).  Answers "count" on stdin with "accepted N".  Exits on
EOF of stdin or after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time

import pysockkit as sk


def echo(conn: sk.Connection) -> None:
    try:
        for msg in conn:
            conn.send(msg, timeout=5.0)
    except sk.Error:
        pass
    finally:
        conn.close()


async def serve_aio(port: int, hb: "sk.Heartbeat | None", max_seconds: float) -> int:
    srv = await sk.aio.serve(("127.0.0.1", port), heartbeat=hb, backlog=4096)
    print(f"port {srv.address[1]}", flush=True)
    loop = asyncio.get_running_loop()
    done = loop.run_in_executor(None, sys.stdin.read)  # EOF ends the server
    try:
        await asyncio.wait_for(done, max_seconds)
    except asyncio.TimeoutError:
        pass
    srv.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--mode", choices=("echo", "slam", "aio"), default="echo")
    p.add_argument("--heartbeat", type=float, nargs=2, default=None)
    p.add_argument("--max-seconds", type=float, default=60.0)
    a = p.parse_args()
    hb = sk.Heartbeat(*a.heartbeat) if a.heartbeat else None
    if a.mode == "aio":
        return asyncio.run(serve_aio(a.port, hb, a.max_seconds))
    lst = sk.listen(("127.0.0.1", a.port), backlog=1024, heartbeat=hb)
    accepted = 0
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "count":
                print(f"accepted {accepted}", flush=True)
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    print(f"port {lst.address[1]}", flush=True)
    end = time.monotonic() + a.max_seconds
    while not stop.is_set() and time.monotonic() < end:
        try:
            conn = lst.accept(timeout=0.2)
        except sk.Timeout:
            continue
        accepted += 1
        if a.mode == "slam":
            conn.close()
        else:
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
    lst.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
