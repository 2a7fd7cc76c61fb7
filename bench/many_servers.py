#!/usr/bin/env python3
"""The Python echo servers of bench/many.py (issue 13): one per process.

    python bench/many_servers.py IMPL BACKLOG

IMPL: uvloop (uvloop streams), asyncio (asyncio streams), threading (stdlib
socketserver.ThreadingTCPServer), aio (pysockkit.aio.serve), sk (sk.serve),
sk-w0 (sk.serve(workers=0): the handler on the reactor's thread), sk-p2
(sk.serve(processes=2)).  Each echoes pysockkit's plain framing
([4-byte big-endian length][payload]) on 127.0.0.1, an ephemeral port,
prints "READY <port>" and serves until SIGTERM or SIGINT.  RLIMIT_NOFILE is
raised to its hard limit first.  Exit status 2 if IMPL cannot run here (a
missing module, or an API that does not exist yet), with the reason on
stderr.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socketserver
import sys
import threading
from typing import Any

HOST = "127.0.0.1"


def ready(port: int) -> None:
    print("READY", port, flush=True)


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT (handled in the main thread)."""
    ev = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ev.set())
    return ev


async def streams_main() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        readexactly, write = reader.readexactly, writer.write
        try:
            while True:
                h = await readexactly(4)
                write(h + await readexactly(int.from_bytes(h, "big")))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0, backlog=BACKLOG)
    await serve_until_signal(server.sockets[0].getsockname()[1])
    server.close()


async def aio_main() -> None:
    from pysockkit import aio

    srv = await aio.serve((HOST, 0), backlog=BACKLOG)
    await serve_until_signal(srv.address[1])
    srv.close()


async def serve_until_signal(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready(port)
    await stop.wait()


class EchoHandler(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True

    def handle(self) -> None:
        read, write = self.rfile.read, self.wfile.write
        try:
            while True:
                h = read(4)
                if len(h) < 4:
                    return
                body = read(int.from_bytes(h, "big"))
                write(h + body)
        except ConnectionError:
            return


class ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def threading_main() -> None:
    ThreadingServer.request_queue_size = BACKLOG
    srv = ThreadingServer((HOST, 0), EchoHandler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    stop = stop_event()
    ready(srv.server_address[1])
    stop.wait()
    srv.shutdown()


def sk_main(processes: int, workers: int = 1) -> None:
    import inspect

    import pysockkit as sk

    kw: dict[str, Any] = {"backlog": BACKLOG}
    if workers != 1:
        kw["workers"] = workers
    if processes > 1:
        if "processes" not in inspect.signature(sk.serve).parameters:
            print("sk.serve has no processes= parameter yet", file=sys.stderr)
            sys.exit(2)
        kw["processes"] = processes
    srv = sk.serve((HOST, 0), **kw)
    stop = stop_event()
    ready(srv.address[1])
    stop.wait()
    srv.close()


def main(argv: list[str]) -> None:
    global BACKLOG
    impl, BACKLOG = argv[0], int(argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if impl == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed (pip install uvloop)", file=sys.stderr)
            sys.exit(2)
        uvloop.run(streams_main())
    elif impl == "asyncio":
        asyncio.run(streams_main())
    elif impl == "aio":
        asyncio.run(aio_main())
    elif impl == "threading":
        threading_main()
    elif impl == "sk":
        sk_main(1)
    elif impl == "sk-w0":
        sk_main(1, workers=0)
    elif impl == "sk-p2":
        sk_main(2)
    else:
        print(f"unknown IMPL {impl!r}", file=sys.stderr)
        sys.exit(2)


BACKLOG = 4096

if __name__ == "__main__":
    main(sys.argv[1:])
