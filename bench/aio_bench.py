"""pysockkit.aio against asyncio streams (and uvloop) on one loopback link.

    python bench/aio_bench.py                      # one run, median of 5 trials
    python bench/aio_bench.py --quick              # smoke test (1 trial, small counts)
    python bench/aio_bench.py --out bench/RESULTS-aio.md

Two scenarios, each trial a sender/client process and a receiver/server
process pinned to CPUs 0 and 1 (the same layout as bench/run.py):

stream-64   one-way 64-byte frames ([4-byte big-endian length][payload]);
            messages/s at the receiver, which checks every payload.
              aio          send_nowait() per message + drain() every 1024;
                           receiver: `async for msg in conn`
              aio batch    send_many(1024 payloads) / recv_many()  (diagnostic)
              streams      writer.write() per message + drain() every 1024;
                           reader.readexactly(4) + readexactly(n)
rr-64x100   pipelined request/reply: 64-byte requests, 100 in flight on one
            connection (100 tasks, each awaiting its own request in a loop),
            replies matched by an 8-byte id; requests/s at the client, which
            checks every reply.
              aio          conn.request() (Framing(correlation=True));
                           server: recv_many() + reply_nowait() + drain()
              streams      write [len][id][payload], a reader task
                           (readexactly) resolving futures from a dict;
                           server: readexactly + write

Every contender runs on the default asyncio loop and on uvloop (when it is
installed: pip install uvloop).  Trials are interleaved (each round runs
every contender once) so that drift on a shared machine hits all alike;
the ratios are medians over medians.

Child processes:  aio_bench.py child ROLE IMPL LOOP SCEN COUNT [PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
SMALL = 64
RING = 65536
MASK = RING - 1
BATCH = 1024
INFLIGHT = 100
PAT = bytes((k * 7 + 13) & 0xFF for k in range(SMALL))
HDR = struct.Struct(">I")
HDR_ID = struct.Struct(">IQ")
now = time.perf_counter_ns


def ring() -> list[bytes]:
    tail = PAT[8:]
    return [i.to_bytes(8, "big") + tail for i in range(RING)]


def bad(what: str, i: int) -> None:
    raise SystemExit(f"verification failed at message {i}: {what}")


def say(**kw: Any) -> None:
    print("RESULT " + json.dumps(kw), flush=True)


# ------------------------------------------------------------------ children


def set_loop(kind: str) -> None:
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def aio_stream_receiver(count: int, batch: bool) -> None:
    import pysockkit.aio as aio

    lst = await aio.listen((HOST, 0))
    print("READY", lst.address[1], flush=True)
    conn = await lst.accept()
    lst.close()
    r = ring()
    first = await conn.recv()
    if first != r[0]:
        bad("payload", 0)
    i = 1
    t0 = now()
    if batch:
        while i < count:
            for m in await conn.recv_many():
                if m != r[i & MASK]:
                    bad("payload", i)
                i += 1
    else:
        async for m in conn:
            if m != r[i & MASK]:
                bad("payload", i)
            i += 1
            if i == count:
                break
    t1 = now()
    say(count=count - 1, elapsed_s=(t1 - t0) / 1e9)
    conn.close()
    await conn.wait_closed()


async def aio_stream_sender(count: int, port: int, batch: bool) -> None:
    import pysockkit.aio as aio

    conn = await aio.connect((HOST, port))
    r = ring()
    if batch:
        for start in range(0, count, BATCH):
            await conn.send_many([r[i & MASK] for i in range(start, min(count, start + BATCH))])
    else:
        send = conn.send_nowait
        for i in range(count):
            send(r[i & MASK])
            if i & 1023 == 1023:
                await conn.drain()
    await conn.drain()
    conn.close()
    await conn.wait_closed()


async def streams_stream_receiver(count: int) -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            r = ring()
            readexactly = reader.readexactly
            n = HDR.unpack(await readexactly(4))[0]
            if await readexactly(n) != r[0]:
                bad("payload", 0)
            t0 = now()
            for i in range(1, count):
                n = int.from_bytes(await readexactly(4), "big")
                if n > SMALL:
                    bad(f"length {n}", i)
                if await readexactly(n) != r[i & MASK]:
                    bad("payload", i)
            t1 = now()
            say(count=count - 1, elapsed_s=(t1 - t0) / 1e9)
        finally:
            writer.close()
            done.set_result(None)

    server = await asyncio.start_server(handle, HOST, 0)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await done
    server.close()
    await server.wait_closed()


async def streams_stream_sender(count: int, port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    r = ring()
    write, pack = writer.write, HDR.pack
    for i in range(count):
        p = r[i & MASK]
        write(pack(len(p)) + p)
        if i & 1023 == 1023:
            await writer.drain()
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def aio_rr_server(simple: bool) -> None:
    import pysockkit as sk
    import pysockkit.aio as aio

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler(conn: aio.Connection) -> None:
        try:
            if simple:
                async for rid, data in conn:  # type: ignore[misc]
                    await conn.reply(rid, data)
            else:
                reply = conn.reply_nowait
                while True:
                    for rid, data in await conn.recv_many():  # type: ignore[misc]
                        reply(rid, data)
                    await conn.drain()
        except sk.ConnectionClosed:
            pass
        finally:
            done.set_result(None)

    server = await aio.serve((HOST, 0), on_connection=handler,
                             framing=sk.Framing(correlation=True))
    print("READY", server.address[1], flush=True)
    await done
    server.close()
    await server.wait_closed()


async def aio_rr_client(count: int, port: int) -> None:
    import pysockkit as sk
    import pysockkit.aio as aio

    conn = await aio.connect((HOST, port), framing=sk.Framing(correlation=True))
    r = ring()
    per = count // INFLIGHT

    async def worker(k: int) -> None:
        request = conn.request
        for j in range(per):
            p = r[(k * per + j) & MASK]
            if await request(p) != p:
                bad("reply differs from request", k * per + j)

    await asyncio.gather(*(worker(k) for k in range(INFLIGHT)))  # warm-up round
    t0 = now()
    await asyncio.gather(*(worker(k) for k in range(INFLIGHT)))
    t1 = now()
    say(count=per * INFLIGHT, elapsed_s=(t1 - t0) / 1e9)
    conn.close()
    await conn.wait_closed()


async def streams_rr_server() -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        readexactly, write = reader.readexactly, writer.write
        try:
            while True:
                try:
                    h = await readexactly(4)
                except asyncio.IncompleteReadError:
                    break
                write(h + await readexactly(int.from_bytes(h, "big")))
        finally:
            writer.close()
            done.set_result(None)

    server = await asyncio.start_server(handle, HOST, 0)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await done
    server.close()
    await server.wait_closed()


async def streams_rr_client(count: int, port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[bytes]] = {}

    async def read_replies() -> None:
        readexactly = reader.readexactly
        while True:
            try:
                n = HDR.unpack(await readexactly(4))[0]
            except asyncio.IncompleteReadError:
                return
            body = await readexactly(n)
            rid = int.from_bytes(body[:8], "big")
            pending.pop(rid).set_result(body[8:])

    reader_task = asyncio.create_task(read_replies())
    r = ring()
    per = count // INFLIGHT
    ids = iter(range(1, 1 << 62))
    write, pack = writer.write, HDR_ID.pack

    async def worker(k: int) -> None:
        for j in range(per):
            p = r[(k * per + j) & MASK]
            rid = next(ids)
            fut = loop.create_future()
            pending[rid] = fut
            write(pack(len(p) + 8, rid) + p)
            if await fut != p:
                bad("reply differs from request", k * per + j)

    await asyncio.gather(*(worker(k) for k in range(INFLIGHT)))
    t0 = now()
    await asyncio.gather(*(worker(k) for k in range(INFLIGHT)))
    t1 = now()
    say(count=per * INFLIGHT, elapsed_s=(t1 - t0) / 1e9)
    writer.close()
    await writer.wait_closed()
    await reader_task


def child(role: str, impl: str, loop: str, scen: str, count: int, port: Optional[int]) -> None:
    set_loop(loop)
    if scen == "stream":
        if role == "server":
            coro: Any = (aio_stream_receiver(count, impl == "aio-batch") if impl.startswith("aio")
                         else streams_stream_receiver(count))
        else:
            assert port is not None
            coro = (aio_stream_sender(count, port, impl == "aio-batch") if impl.startswith("aio")
                    else streams_stream_sender(count, port))
    else:
        if role == "server":
            coro = aio_rr_server(impl == "aio-simple") if impl.startswith("aio") else streams_rr_server()
        else:
            assert port is not None
            coro = aio_rr_client(count, port) if impl.startswith("aio") else streams_rr_client(count, port)
    if impl.startswith("aio"):
        import pysockkit.aio  # noqa: F401  (imported before the CPU clock starts)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    asyncio.run(coro)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    msgs = count if scen == "stream" else 2 * (count // INFLIGHT) * INFLIGHT  # + warm-up round
    print(f"CPU {cpu:.6f} {msgs}", flush=True)


# ------------------------------------------------------------------ driver


@dataclass
class Row:
    key: str
    label: str
    impl: str
    loop: str
    scen: str
    guess: float  # msg/s, for the pilot-free first count
    values: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU µs per message, both processes
    error: str = ""


def rows(have_uvloop: bool) -> list[Row]:
    out = [
        Row("s-aio", "pysockkit.aio: send_nowait / async for", "aio", "asyncio", "stream", 1e6),
        Row("s-aio-batch", "pysockkit.aio: send_many / recv_many (diagnostic)", "aio-batch",
            "asyncio", "stream", 4e6),
        Row("s-streams", "asyncio streams: write / readexactly", "streams", "asyncio", "stream", 2e5),
        Row("r-aio", "pysockkit.aio: request (server recv_many + reply_nowait)", "aio", "asyncio",
            "rr", 1e5),
        Row("r-aio-simple", "pysockkit.aio: request (server async for + await reply)",
            "aio-simple", "asyncio", "rr", 1e5),
        Row("r-streams", "asyncio streams: futures by id / readexactly", "streams", "asyncio",
            "rr", 4e4),
    ]
    if have_uvloop:
        out += [
            Row("s-aio-uv", "pysockkit.aio on uvloop: send_nowait / async for", "aio", "uvloop",
                "stream", 1e6),
            Row("s-streams-uv", "uvloop streams: write / readexactly", "streams", "uvloop",
                "stream", 4e5),
            Row("r-aio-uv", "pysockkit.aio on uvloop: request", "aio", "uvloop", "rr", 1e5),
            Row("r-streams-uv", "uvloop streams: futures by id / readexactly", "streams",
                "uvloop", "rr", 8e4),
        ]
    return out


def pin(cpu: int) -> Any:
    def f() -> None:
        os.sched_setaffinity(0, {cpu})

    return f


def trial(row: Row, count: int, timeout: float) -> tuple[float, float]:
    """(messages/s, CPU µs per message of both processes together)."""
    me = [sys.executable, str(Path(__file__).resolve()), "child"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    srv = subprocess.Popen(me + ["server", row.impl, row.loop, row.scen, str(count)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           preexec_fn=pin(1))
    cli: Optional[subprocess.Popen[str]] = None
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"server: {line} {srv.stderr.read() if srv.stderr else ''}")
        cli = subprocess.Popen(me + ["client", row.impl, row.loop, row.scen, str(count), line[1]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=pin(0))
        cout, cerr = cli.communicate(timeout=timeout)
        sout, serr = srv.communicate(timeout=timeout)
        if cli.returncode or srv.returncode:
            raise RuntimeError(f"exit {srv.returncode}/{cli.returncode}: {(serr + cerr)[-400:]}")
        rate = None
        cpu_us = 0.0
        for text in (sout, cout):
            for ln in text.splitlines():
                if ln.startswith("RESULT "):
                    res = json.loads(ln[7:])
                    rate = float(res["count"]) / float(res["elapsed_s"])
                elif ln.startswith("CPU "):
                    _, sec, msgs = ln.split()
                    cpu_us += float(sec) / int(msgs) * 1e6
        if rate is None:
            raise RuntimeError("no RESULT line")
        return rate, cpu_us
    finally:
        for p in (srv, cli):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over the next `seconds` (from /proc/stat)."""
    def read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    a = read()
    time.sleep(seconds)
    d = [y - x for x, y in zip(a, read())]
    total = sum(d) or 1
    return (total - d[3] - d[4]) / total


def wait_quiet(limit: float) -> tuple[bool, float]:
    """Wait (at most `limit` s) until other work uses under 10% of the CPUs."""
    end = time.monotonic() + limit
    busy = cpu_busy()
    while busy >= 0.10 and time.monotonic() < end:
        busy = cpu_busy()
    return busy < 0.10, busy


def fmt(v: Optional[float]) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1e6:.3f} M" if v >= 1e6 else f"{v / 1e3:.1f} k"


def median(row: Row) -> Optional[float]:
    return statistics.median(row.values) if row.values else None


def ratio(a: Optional[Row], b: Optional[Row]) -> Optional[float]:
    if a is None or b is None:
        return None
    ma, mb = median(a), median(b)
    return None if ma is None or mb is None else ma / mb


def cpu_ratio(a: Optional[Row], b: Optional[Row]) -> Optional[float]:
    if a is None or b is None or not a.cpu or not b.cpu:
        return None
    return statistics.median(a.cpu) / statistics.median(b.cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="target length of one trial")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="also write a markdown report here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each round, wait up to S s until other work uses < 10%% of the CPUs")
    a = ap.parse_args()
    try:
        import uvloop

        uv_version: Optional[str] = uvloop.__version__
    except ImportError:
        uv_version = None
    table = rows(uv_version is not None)
    repeat = 1 if a.quick else a.repeat
    seconds = 0.2 if a.quick else a.seconds
    t_start = time.monotonic()
    counts: dict[str, int] = {}
    # pilot: size each contender's trial to about `seconds`
    for row in table:
        n = max(INFLIGHT * 20, int(row.guess * seconds / 4) // INFLIGHT * INFLIGHT)
        try:
            rate, _ = trial(row, n, 120)
        except Exception as exc:  # report, keep going
            row.error = str(exc)[:200]
            continue
        counts[row.key] = max(INFLIGHT * 20, int(rate * seconds) // INFLIGHT * INFLIGHT)
    quiet_rounds = 0
    busy_seen: list[float] = []
    for rnd in range(repeat):
        if a.wait_quiet > 0:
            ok, busy = wait_quiet(a.wait_quiet)
            quiet_rounds += ok
            busy_seen.append(busy)
        for row in table:
            if row.error:
                continue
            try:
                rate, cpu_us = trial(row, counts[row.key], 120)
                row.values.append(rate)
                row.cpu.append(cpu_us)
            except Exception as exc:
                row.error = str(exc)[:200]
        print(f"round {rnd + 1}/{repeat} done", file=sys.stderr, flush=True)
    wall = time.monotonic() - t_start
    by = {r.key: r for r in table}

    lines: list[str] = []
    lines.append("# pysockkit.aio benchmark results\n")
    lines.append(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    lines.append(f"- kernel: {platform.system()} {platform.release()} ({platform.machine()})")
    lines.append(f"- CPUs online: {os.cpu_count()}; sender/client on CPU 0, receiver/server on CPU 1")
    lines.append(f"- Python: {platform.python_implementation()} {platform.python_version()}; "
                 f"uvloop {uv_version or 'not installed'}")
    load = os.getloadavg()
    lines.append(f"- load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
                 "(other work on the machine disturbs the figures)")
    if a.wait_quiet > 0:
        lines.append(f"- rounds started on a quiet machine (other work < 10% of the CPUs): "
                     f"{quiet_rounds} of {repeat}; CPU busy before each round: "
                     + ", ".join(f"{b:.0%}" for b in busy_seen))
    lines.append(f"- command: `python bench/aio_bench.py {' '.join(sys.argv[1:])}`".replace("  ", " "))
    lines.append(f"- {repeat} trial(s) per contender, interleaved, about {seconds} s each; "
                 f"wall time {wall:.0f} s\n")
    for scen, title, unit in (("stream", "stream-64: one-way 64-byte frames", "msg/s at the receiver"),
                              ("rr", "rr-64x100: pipelined request/reply, 64 bytes, 100 in flight",
                               "requests/s at the client")):
        lines.append(f"### {title}\n")
        lines.append(f"| contender | loop | median {unit} | min | max | CPU µs/msg, both processes | n |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for row in table:
            if row.scen != scen:
                continue
            if row.error:
                lines.append(f"| {row.label} | {row.loop} | error: {row.error} | | | | |")
                continue
            lines.append(f"| {row.label} | {row.loop} | {fmt(median(row))} | "
                         f"{fmt(min(row.values))} | {fmt(max(row.values))} | "
                         f"{statistics.median(row.cpu):.2f} | "
                         f"{len(row.values)}×{counts.get(row.key, 0)} |")
        lines.append("")
    targets = [
        ("stream-64: aio ≥ 5× asyncio streams (default loop)", ratio(by.get("s-aio"), by.get("s-streams")), 5.0),
        ("rr-64x100: aio ≥ 3× asyncio streams (default loop)", ratio(by.get("r-aio"), by.get("r-streams")), 3.0),
        ("rr-64x100: aio (default loop) ≥ 1× uvloop streams", ratio(by.get("r-aio"), by.get("r-streams-uv")), 1.0),
    ]
    extra = [
        ("stream-64: aio send_many/recv_many vs asyncio streams", ratio(by.get("s-aio-batch"), by.get("s-streams"))),
        ("stream-64: aio on uvloop vs uvloop streams", ratio(by.get("s-aio-uv"), by.get("s-streams-uv"))),
        ("stream-64: aio (default loop) vs uvloop streams", ratio(by.get("s-aio"), by.get("s-streams-uv"))),
        ("rr-64x100: aio, simple server handler vs asyncio streams", ratio(by.get("r-aio-simple"), by.get("r-streams"))),
        ("rr-64x100: aio on uvloop vs uvloop streams", ratio(by.get("r-aio-uv"), by.get("r-streams-uv"))),
        ("stream-64: CPU per message, asyncio streams / aio", cpu_ratio(by.get("s-streams"), by.get("s-aio"))),
        ("rr-64x100: CPU per request, asyncio streams / aio", cpu_ratio(by.get("r-streams"), by.get("r-aio"))),
        ("rr-64x100: CPU per request, uvloop streams / aio (default loop)",
         cpu_ratio(by.get("r-streams-uv"), by.get("r-aio"))),
    ]
    lines.append("### Ratios (median over median)\n")
    lines.append("| target | ratio | goal | met |")
    lines.append("|---|---:|---:|---|")
    for name, r, goal in targets:
        met = "n/a" if r is None else ("yes" if r >= goal else "**no**")
        lines.append(f"| {name} | {'n/a' if r is None else f'{r:.2f}×'} | ≥ {goal:g}× | {met} |")
    for name, r in extra:
        lines.append(f"| {name} | {'n/a' if r is None else f'{r:.2f}×'} | (info) | |")
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        Path(a.out).write_text(report)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        r, impl, loop, scen, count = sys.argv[2:7]
        child(r, impl, loop, scen, int(count), int(sys.argv[7]) if len(sys.argv) > 7 else None)
    else:
        raise SystemExit(main())
