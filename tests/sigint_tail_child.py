"""Child process of tests/test_signals.py: Ctrl-C in the middle of a frame.

Run as ``python sigint_tail_child.py CASE [HOST PORT]``.  The child prints
``ready`` just before it enters the blocking call under test; the test then
sends SIGINT.  The child catches the KeyboardInterrupt, prints
``interrupted <time.monotonic()>`` (CLOCK_MONOTONIC is system-wide, so the
parent can compare it with its own clock), carries on with the connection
as a program that survived Ctrl-C would, and prints ``result <json>``.

For the cases with HOST PORT the peer is the test process itself, a plain
stdlib socket with a 4 KiB receive buffer that reads nothing until the
interrupt came: it then reads the whole stream and decodes it with its own
reference decoder.  The other cases hold both ends here and report what
they saw.

The payloads are functions of their names (``payload``), so the parent
knows exactly which bytes must arrive.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import sys
import threading
import time
from typing import Any

from helpers import recv_exact

# bytes: far more than the socket buffers of both ends hold (the send
# buffer grows up to net.ipv4.tcp_wmem's 4 MiB, the receive window starts
# at about 64 KiB and stays there while nobody reads)
BIG = 12 << 20
MANY = 48  # frames of send_many, PART bytes each
PART = 256 << 10
STEP = 10.0  # upper bound of every wait after the interrupt
WB_SIZE = 1000  # send_wb: bytes per frame
WB_LIMIT = 20_000  # send_wb: far more bytes than both ends' buffers hold (4 MiB)


def payload(name: str, size: int) -> bytes:
    """The payload called ``name``: ``size`` pseudo-random bytes."""
    return random.Random(name).randbytes(size)


def many() -> list[bytes]:
    return [payload(f"part {i}", PART) for i in range(MANY)]


def _interrupted() -> None:
    print("interrupted", time.monotonic(), flush=True)


def _result(**kw: Any) -> None:
    print("result", json.dumps(kw), flush=True)


def _ready() -> None:
    print("ready", flush=True)


def _sent(exc: BaseException) -> Any:
    return getattr(exc, "sent", None)


def _torn(sk: Any, conn: Any) -> Any:
    """Begin frame A and time out half-way: its tail stays in conn.
    Returns the Timeout's ``sent``."""
    try:
        conn.send(payload("A", BIG), timeout=0.3)
    except sk.Timeout as exc:
        return _sent(exc)
    raise AssertionError("a send of BIG bytes to a peer that does not read completed")


def run(case: str, argv: list[str]) -> None:
    import pysockkit as sk

    if case in ("send", "send_many", "send_wb", "flush", "shutdown", "call_reply",
                "call_mid_frame"):
        addr = (argv[0], int(argv[1]))
    if case in ("send", "send_many"):
        frames = [payload("A", BIG)] if case == "send" else many()
        with sk.connect(addr, timeout=STEP) as conn:
            _ready()
            try:
                if case == "send":
                    conn.send(frames[0])
                else:
                    conn.send_many(frames)
            except KeyboardInterrupt as exc:
                _interrupted()
                kept, sent = conn.unsent, _sent(exc)
            conn.send(payload("B", 100), timeout=STEP)  # the kept tail goes first
            _result(kept=kept, sent=sent, unsent_after=conn.unsent)
    elif case == "send_wb":
        # write_behind: the interrupted send was writing the queue (full:
        # the peer reads nothing) before queueing its own frame
        frames = [payload(f"W {i}", WB_SIZE) for i in range(WB_LIMIT)]
        with sk.connect(addr, timeout=STEP, write_behind=True) as conn:
            _ready()
            ok = 0
            try:
                for f in frames:
                    conn.send(f)
                    ok += 1
            except KeyboardInterrupt as exc:
                _interrupted()
                kept, sent = conn.unsent, _sent(exc)
            else:
                raise AssertionError("every send to a peer that reads nothing returned")
            conn.send(payload("B", 100), timeout=STEP)  # queued after the rest
            conn.flush(timeout=STEP)
            _result(ok=ok, kept=kept, sent=sent, unsent_after=conn.unsent)
    elif case == "flush":
        with sk.connect(addr, timeout=STEP) as conn:
            timeout_sent = _torn(sk, conn)
            _ready()
            try:
                conn.flush()
            except KeyboardInterrupt:
                _interrupted()
                kept = conn.unsent
            conn.flush(timeout=STEP)
            flushed = conn.unsent
            conn.send(payload("B", 100), timeout=STEP)
            _result(kept=kept, timeout_sent=timeout_sent, unsent_after=flushed)
    elif case == "shutdown":
        with sk.connect(addr, timeout=STEP) as conn:
            timeout_sent = _torn(sk, conn)
            _ready()
            try:
                conn.shutdown("write")
            except KeyboardInterrupt:
                _interrupted()
                kept = conn.unsent
            conn.shutdown("write", timeout=STEP)
            try:
                conn.send(b"after FIN", timeout=STEP)
                after_fin = "sent"
            except sk.ConnectionClosed as exc:
                after_fin = type(exc).__name__
            got = conn.recv(timeout=STEP)  # the read side still works
            _result(kept=kept, timeout_sent=timeout_sent, after_fin=after_fin,
                    got=got.decode())
    elif case in ("call_reply", "call_mid_frame"):
        # call_reply: the request is sent whole, Ctrl-C comes while the
        # reply is awaited.  call_mid_frame: Ctrl-C while the request is
        # half-written; call() closes its connection and close() never
        # waits, so the peer gets a torn frame, then FIN (sk.IncompleteFrame)
        request = payload("R", 1000) if case == "call_reply" else payload("A", BIG)
        _ready()
        try:
            sk.call(addr, request)
        except KeyboardInterrupt:
            _interrupted()
        reply = sk.call(addr, payload("R2", 1000), timeout=STEP)
        _result(reply=reply.decode())
    elif case == "get":
        duplex_get(sk)
    elif case in ("simplex_wait", "simplex_send"):
        simplex_request(sk, case)
    else:
        sys.exit(f"unknown case {case}")


def duplex_get(sk: Any) -> None:
    """Ctrl-C in Duplex.get() while a frame is half-received."""
    ls = socket.create_server(("127.0.0.1", 0))
    fr = sk.Framing(correlation=True)
    conn = sk.connect(ls.getsockname(), timeout=STEP, framing=fr)
    raw, _ = ls.accept()
    raw.settimeout(STEP)
    ls.close()
    d = conn.start_receiver(maxsize=4)
    first = payload("M1", 100_000)
    wire = len(first).to_bytes(4, "big") + first
    raw.sendall(wire[:50_000])  # half of the first frame
    _ready()
    try:
        d.get()
    except KeyboardInterrupt:
        _interrupted()
    raw.sendall(wire[50_000:] + len(b"M2").to_bytes(4, "big") + b"M2")
    got = [d.get(timeout=STEP), d.get(timeout=STEP)]

    def answer() -> None:  # the raw peer answers one correlated request
        head = recv_exact(raw, 4)
        body = recv_exact(raw, int.from_bytes(head, "big") & 0x3FFFFFFF)
        rid = int.from_bytes(body[:8], "big") | 1 << 63
        out = rid.to_bytes(8, "big") + body[8:].upper()
        raw.sendall((len(out) | 1 << 30).to_bytes(4, "big") + out)

    t = threading.Thread(target=answer)
    t.start()
    reply = d.request(b"still usable?", timeout=STEP)
    t.join(STEP)
    _result(first_ok=got[0] == first, second=got[1].decode() if isinstance(got[1], bytes)
            else repr(got[1]), reply=reply.decode(), stats=dict(d.stats))
    conn.close()
    raw.close()


def simplex_request(sk: Any, case: str) -> None:
    """Ctrl-C in simplex.Client.request, waiting for the reply
    (simplex_wait) or half-way through sending a big request
    (simplex_send)."""
    from pysockkit import simplex

    seen: list[tuple[int, str]] = []
    entered = threading.Event()
    gate = threading.Event()

    def handler(p: bytes) -> bytes:
        seen.append((len(p), hashlib.sha256(p).hexdigest()))
        if p == b"slow":
            entered.set()
            gate.wait(STEP)
        return p.upper() if len(p) < 100 else hashlib.sha256(p).digest()

    big = payload("A", BIG)
    # max_inflight=1: while "slow" is being handled the server reads
    # nothing more, so TCP pushes back and a big request blocks mid-frame
    with simplex.Server(("127.0.0.1", 0), ("127.0.0.1", 0), handler, max_inflight=1) as srv, \
            simplex.Client(srv.request_address, srv.reply_address, connect_timeout=STEP) as cli:
        if case == "simplex_wait":
            _ready()
            try:
                cli.request(b"slow")
            except KeyboardInterrupt:
                _interrupted()
        else:
            slow = cli.request_async(b"slow", timeout=STEP)
            entered.wait(STEP)
            _ready()
            try:
                cli.request(big)
            except KeyboardInterrupt:
                _interrupted()
        gate.set()
        reply = cli.request(b"next", timeout=STEP)
        deadline = time.monotonic() + STEP
        while (cli.stats.pending or len(seen) < (2 if case == "simplex_wait" else 3)) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if case == "simplex_send":
            assert slow.result(STEP) == b"SLOW"
        st = cli.stats
        _result(reply=reply.decode(), seen=seen, late=st.late, duplicate=st.duplicate,
                unknown=st.unknown, replied=st.replied, pending=st.pending,
                big=[BIG, hashlib.sha256(big).hexdigest()])


if __name__ == "__main__":
    # a shell's background job starts with SIGINT ignored: restore Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run(sys.argv[1], sys.argv[2:])
