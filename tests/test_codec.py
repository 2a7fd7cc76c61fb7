"""The frame codec, exercised through real loopback sockets.

A plain stdlib sender (struct + socket) writes frames in awkward pieces; a
pysockkit Connection must reassemble every frame exactly and in order, and
must fail cleanly (FrameTooLarge, IncompleteFrame) on bad input.
"""

from __future__ import annotations

import random
import socket
import time
import zlib

import pytest

import pysockkit as sk
from helpers import (
    STEP_TIMEOUT,
    decode_stream,
    encode,
    encode_header,
    random_payloads,
    random_splits,
    recv_frame,
    start_thread,
    proc_status_kib,
    vmrss_kib,
)

HEADER_SIZES = [1, 2, 4, 8]
BYTEORDERS = ["big", "little"]


def _payloads_for(header_size: int, mode: str, seed: int) -> list[bytes]:
    """Seeded payloads that fit the header: sizes 0, 1, the largest usual
    size, and a few large frames (the header's limit for 1/2-byte headers)."""
    rng = random.Random(seed)
    if mode == "bytewise":  # one syscall per byte: keep the stream small
        if header_size == 1:
            return random_payloads(rng, 60, 255)
        return random_payloads(rng, 30, 600, large=[5000])
    if header_size == 1:
        return random_payloads(rng, 150, 255)
    if header_size == 2:
        return random_payloads(rng, 40, 2000, large=[65535])
    return random_payloads(rng, 60, 3000, large=[300_000, 1 << 20])


def _stream_sender(raw: socket.socket, pieces: list[bytes]) -> None:
    raw.settimeout(STEP_TIMEOUT)
    for p in pieces:
        raw.sendall(p)
    raw.shutdown(socket.SHUT_WR)


def _receive_all(conn: sk.Connection, api: str, expected_count: int) -> list[bytes]:
    got: list[bytes] = []
    if api == "recv":
        for _ in range(expected_count):
            got.append(conn.recv(timeout=STEP_TIMEOUT))
    else:
        calls = 0
        while len(got) < expected_count:
            calls += 1
            assert calls <= expected_count, "recv_many returned an empty list"
            batch = conn.recv_many(max_frames=7, timeout=STEP_TIMEOUT)
            assert 1 <= len(batch) <= 7
            got.extend(batch)
    return got


@pytest.mark.parametrize("api", ["recv", "recv_many"])
@pytest.mark.parametrize("byteorder", BYTEORDERS)
@pytest.mark.parametrize("header_size", HEADER_SIZES)
@pytest.mark.parametrize("mode", ["bytewise", "random_splits"])
def test_stream_reassembled_exactly(raw_to_conn, mode, header_size, byteorder, api):
    framing = sk.Framing(header_size=header_size, byteorder=byteorder)
    seed = zlib.crc32(f"{mode}-{header_size}-{byteorder}-{api}".encode())
    payloads = _payloads_for(header_size, mode, seed)
    stream = b"".join(encode(p, header_size, byteorder) for p in payloads)
    if mode == "bytewise":
        pieces = [stream[i : i + 1] for i in range(len(stream))]
    else:
        pieces = random_splits(random.Random(seed + 1), stream, 4096)
    raw, conn = raw_to_conn(framing=framing, nodelay=True)
    sender = start_thread(_stream_sender, raw, pieces, name="sender")
    got = _receive_all(conn, api, len(payloads))
    sender.join_result()
    assert len(got) == len(payloads)
    for i, (g, p) in enumerate(zip(got, payloads)):
        assert g == p, f"frame {i} differs (len {len(g)} vs {len(p)})"
    # the stream ended at a frame boundary: an orderly close, nothing left over
    with pytest.raises(sk.ConnectionClosed) as ei:
        conn.recv(timeout=STEP_TIMEOUT)
    assert not isinstance(ei.value, sk.ConnectionReset)
    assert conn.buffered == 0


@pytest.mark.parametrize("header_size", HEADER_SIZES)
@pytest.mark.parametrize("byteorder", BYTEORDERS)
def test_framing_encode_matches_struct(header_size, byteorder):
    f = sk.Framing(header_size=header_size, byteorder=byteorder)
    for n in (0, 1, 7, 200, 255):
        payload = bytes(range(256))[:n]
        assert f.encode(payload) == encode(payload, header_size, byteorder)
    limit = {1: 255, 2: 65535}.get(header_size)
    if limit is not None:
        assert f.max_frame == limit
    else:
        assert f.max_frame == 16 * 2**20


def test_framing_rejects_bad_values():
    with pytest.raises(ValueError):
        sk.Framing(header_size=3)
    with pytest.raises(ValueError):
        sk.Framing(byteorder="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sk.Framing(max_frame=0)
    with pytest.raises(ValueError):
        sk.Framing(header_size=1, max_frame=256)
    with pytest.raises(sk.FrameTooLarge):
        sk.Framing(header_size=1).encode(bytes(256))


# --------------------------------------------------------------- too large


OVERSIZED = [
    # (header_size, byteorder, max_frame or None for default, declared)
    (4, "big", None, 2**32 - 1),  # ~4 GiB with the default 16 MiB limit
    (4, "little", None, 16 * 2**20 + 1),
    (8, "big", None, 4 * 2**30),  # exactly 4 GiB
    (8, "little", None, 2**63 + 5),  # top bit set
    (8, "big", None, 2**64 - 1),
    (2, "little", 1000, 1001),
    (1, "big", 10, 11),
]


@pytest.mark.parametrize("header_size,byteorder,max_frame,declared", OVERSIZED)
def test_oversized_header_raises_without_allocating(
    raw_to_conn, header_size, byteorder, max_frame, declared
):
    kw = {} if max_frame is None else {"max_frame": max_frame}
    framing = sk.Framing(header_size=header_size, byteorder=byteorder, **kw)
    raw, conn = raw_to_conn(framing=framing)
    good = [b"", b"ok", b"x" * min(framing.max_frame, 200)]
    for p in good:
        raw.sendall(encode(p, header_size, byteorder))
    # the bad header, then some payload bytes, and the stream stays open:
    # the error must come from the header alone, not from EOF or a timeout
    raw.sendall(encode_header(declared, header_size, byteorder) + b"\xab" * 5000)
    for p in good:
        assert conn.recv(timeout=STEP_TIMEOUT) == p
    rss_before, vsz_before = vmrss_kib(), proc_status_kib("VmSize")
    t0 = time.monotonic()
    with pytest.raises(sk.FrameTooLarge) as ei:
        conn.recv(timeout=STEP_TIMEOUT)
    assert time.monotonic() - t0 < STEP_TIMEOUT / 2, "FrameTooLarge came only after a wait"
    rss_after, vsz_after = vmrss_kib(), proc_status_kib("VmSize")
    assert ei.value.size == declared
    assert isinstance(ei.value, sk.Error) and isinstance(ei.value, OSError)
    assert rss_after - rss_before < 50 * 1024, (
        f"RSS grew by {(rss_after - rss_before) / 1024:.1f} MiB on a {declared}-byte header"
    )
    # nothing of the declared size was even reserved (an untouched 4 GiB
    # malloc would not show in RSS, but it does in the address space)
    assert vsz_after - vsz_before < 1024 * 1024, (
        f"address space grew by {(vsz_after - vsz_before) / 1024:.1f} MiB"
    )
    # sticky: every later receive fails the same way
    for _ in range(2):
        with pytest.raises(sk.FrameTooLarge) as ei2:
            conn.recv(timeout=0)
        assert ei2.value.size == declared
    with pytest.raises(sk.FrameTooLarge) as ei3:
        conn.recv_many(timeout=0)
    assert ei3.value.size == declared


def test_max_frame_boundary_is_accepted(raw_to_conn):
    framing = sk.Framing(header_size=2, byteorder="little", max_frame=1000)
    raw, conn = raw_to_conn(framing=framing)
    payload = bytes(random.Random(5).randbytes(1000))
    raw.sendall(encode(payload, 2, "little"))
    assert conn.recv(timeout=STEP_TIMEOUT) == payload


def test_recv_many_returns_good_frames_before_the_bad_header(raw_to_conn):
    raw, conn = raw_to_conn(framing=sk.Framing(max_frame=100))
    good = [b"a", b"bb", b"ccc"]
    raw.sendall(b"".join(encode(p) for p in good) + encode_header(101))
    got: list[bytes] = []
    with pytest.raises(sk.FrameTooLarge) as ei:
        for _ in range(5):
            got.extend(conn.recv_many(timeout=STEP_TIMEOUT))
    assert got == good
    assert ei.value.size == 101


# -------------------------------------------------------------- truncated


@pytest.mark.parametrize("byteorder", BYTEORDERS)
@pytest.mark.parametrize("header_size", [2, 4, 8])  # a 1-byte header cannot be cut
@pytest.mark.parametrize("api", ["recv", "recv_many"])
def test_truncated_header_then_eof(raw_to_conn, header_size, byteorder, api):
    framing = sk.Framing(header_size=header_size, byteorder=byteorder)
    for have in range(1, header_size):
        raw, conn = raw_to_conn(framing=framing)
        raw.sendall(encode(b"first", header_size, byteorder) + encode_header(3, header_size, byteorder)[:have])
        raw.shutdown(socket.SHUT_WR)
        if api == "recv":
            assert conn.recv(timeout=STEP_TIMEOUT) == b"first"
        else:
            assert conn.recv_many(timeout=STEP_TIMEOUT) == [b"first"]
        with pytest.raises(sk.IncompleteFrame) as ei:
            if api == "recv":
                conn.recv(timeout=STEP_TIMEOUT)
            else:
                conn.recv_many(timeout=STEP_TIMEOUT)
        assert ei.value.missing == header_size - have
        assert not isinstance(ei.value, sk.ConnectionClosed)
        # sticky
        with pytest.raises(sk.IncompleteFrame):
            conn.recv(timeout=STEP_TIMEOUT)
        raw.close()
        conn.close()


@pytest.mark.parametrize("byteorder", BYTEORDERS)
@pytest.mark.parametrize("header_size", HEADER_SIZES)
@pytest.mark.parametrize("api", ["recv", "recv_many"])
def test_truncated_payload_then_eof(raw_to_conn, header_size, byteorder, api):
    framing = sk.Framing(header_size=header_size, byteorder=byteorder)
    declared = 200 if header_size == 1 else 70_000 if header_size >= 4 else 60_000
    for have in (0, 1, declared // 2, declared - 1):
        raw, conn = raw_to_conn(framing=framing)
        raw.sendall(
            encode(b"first", header_size, byteorder)
            + encode_header(declared, header_size, byteorder)
            + b"\x5a" * have
        )
        raw.shutdown(socket.SHUT_WR)
        if api == "recv":
            assert conn.recv(timeout=STEP_TIMEOUT) == b"first"
        else:
            assert conn.recv_many(timeout=STEP_TIMEOUT) == [b"first"]
        with pytest.raises(sk.IncompleteFrame) as ei:
            if api == "recv":
                conn.recv(timeout=STEP_TIMEOUT)
            else:
                conn.recv_many(timeout=STEP_TIMEOUT)
        assert ei.value.missing == declared - have
        with pytest.raises(sk.IncompleteFrame) as ei2:
            conn.recv(timeout=STEP_TIMEOUT)
        assert ei2.value.missing == declared - have
        raw.close()
        conn.close()


# ----------------------------------------------------------------- garbage


def _garbage(rng: random.Random, header_size: int, byteorder: str, max_frame: int) -> bytes:
    """Plausible frames, frames a bit too large, and raw noise, mixed."""
    out = bytearray()
    while len(out) < 6000:
        kind = rng.random()
        if kind < 0.6:
            out += encode(rng.randbytes(rng.randint(0, max_frame)), header_size, byteorder)
        elif kind < 0.8:
            out += rng.randbytes(rng.randint(1, 40))
        else:
            n = rng.randint(max_frame + 1, min(2**(8 * header_size) - 1, max_frame * 4))
            out += encode_header(n, header_size, byteorder) + rng.randbytes(rng.randint(0, 30))
    if rng.random() < 0.5:  # sometimes end mid-way
        del out[rng.randint(0, len(out)) :]
    return bytes(out)


@pytest.mark.parametrize("seed", range(12))
def test_random_garbage_never_crashes_or_hangs(raw_to_conn, seed):
    rng = random.Random(1000 + seed)
    header_size = [1, 2, 4, 8][seed % 4]
    byteorder = BYTEORDERS[(seed // 4) % 2]
    max_frame = rng.choice([3, 17, 50, 200])
    framing = sk.Framing(header_size=header_size, byteorder=byteorder, max_frame=max_frame)
    data = _garbage(rng, header_size, byteorder, max_frame)
    want_frames, outcome, detail = decode_stream(data, header_size, byteorder, max_frame)
    raw, conn = raw_to_conn(framing=framing)
    sender = start_thread(_stream_sender, raw, random_splits(rng, data, 300), name="garbage")
    got: list[bytes] = []
    use_many = seed % 2 == 1
    with pytest.raises(sk.Error) as ei:
        for _ in range(len(data) + 2):  # bounded: at most one frame per byte
            if use_many:
                got.extend(conn.recv_many(max_frames=5, timeout=STEP_TIMEOUT))
            else:
                got.append(conn.recv(timeout=STEP_TIMEOUT))
    sender.join_result()
    exc = ei.value
    assert not isinstance(exc, sk.Timeout), "receiver waited instead of failing"
    assert got == want_frames
    assert all(len(g) <= max_frame for g in got)
    if outcome == "closed":
        assert type(exc) is sk.ConnectionClosed
    elif outcome == "too_large":
        assert isinstance(exc, sk.FrameTooLarge)
        assert exc.size == detail
    else:
        assert isinstance(exc, sk.IncompleteFrame)
        assert exc.missing == detail


# -------------------------------------------------------------- send side


def _assert_nothing_more(raw: socket.socket, wait: float = 0.1) -> None:
    raw.settimeout(wait)
    try:
        extra = raw.recv(65536)
    except socket.timeout:
        return
    finally:
        raw.settimeout(STEP_TIMEOUT)
    raise AssertionError(f"unexpected bytes on the wire: {extra[:40]!r}")


def test_send_oversized_frame_sends_nothing(conn_to_raw):
    conn, raw = conn_to_raw(framing=sk.Framing(max_frame=100))
    with pytest.raises(sk.FrameTooLarge) as ei:
        conn.send(b"x" * 101)
    assert isinstance(ei.value, sk.Error)
    assert conn.unsent == 0
    conn.send(b"y" * 100)
    conn.send(b"next")
    assert recv_frame(raw) == b"y" * 100
    assert recv_frame(raw) == b"next"
    _assert_nothing_more(raw)


@pytest.mark.parametrize("header_size", [1, 2])
def test_send_over_header_limit_with_default_max_frame(conn_to_raw, header_size):
    conn, raw = conn_to_raw(framing=sk.Framing(header_size=header_size))
    limit = 2 ** (8 * header_size) - 1
    with pytest.raises(sk.FrameTooLarge):
        conn.send(bytes(limit + 1))
    conn.send(b"\x01" * limit)
    assert recv_frame(raw, header_size) == b"\x01" * limit
    _assert_nothing_more(raw)


def test_send_many_with_oversized_frame_sends_nothing_of_the_batch(conn_to_raw):
    conn, raw = conn_to_raw(framing=sk.Framing(max_frame=100))
    batch = [b"a", b"b" * 100, b"c" * 101, b"d"]
    with pytest.raises(sk.FrameTooLarge) as ei:
        conn.send_many(batch)
    assert ei.value.size == 2, "send side: .size is the index of the offending frame"
    assert getattr(ei.value, "sent", 0) == 0
    conn.send(b"after")
    assert recv_frame(raw) == b"after"
    _assert_nothing_more(raw)


def test_send_many_oversized_frame_beyond_first_internal_batch(conn_to_raw):
    """The check covers the whole call, not only the first internal chunk of
    frames: nothing of a send_many() holding a too-large frame goes out."""
    conn, raw = conn_to_raw(framing=sk.Framing(max_frame=100))
    batch = [b"%d" % i for i in range(3000)]
    batch[2500] = bytes(101)
    with pytest.raises(sk.FrameTooLarge) as ei:
        conn.send_many(batch)
    assert ei.value.size == 2500
    conn.send(b"after")
    assert recv_frame(raw) == b"after", "frames of a rejected send_many() were sent"
    _assert_nothing_more(raw)


@pytest.mark.parametrize("header_size", HEADER_SIZES)
@pytest.mark.parametrize("byteorder", BYTEORDERS)
def test_send_encodes_with_struct_layout(conn_to_raw, header_size, byteorder):
    framing = sk.Framing(header_size=header_size, byteorder=byteorder)
    conn, raw = conn_to_raw(framing=framing)
    rng = random.Random(header_size * 2 + len(byteorder))
    payloads = random_payloads(rng, 30, framing.max_frame if header_size == 1 else 5000)
    for p in payloads[:10]:
        conn.send(p)
    assert conn.send_many(payloads[10:]) == len(payloads) - 10
    for p in payloads:
        assert recv_frame(raw, header_size, byteorder) == p
    _assert_nothing_more(raw, 0.05)


# ------------------------------------------------------ bytes-like inputs


def test_send_accepts_bytes_like_objects(conn_pair):
    cli, srv = conn_pair()
    data = bytes(range(200))
    cli.send(bytearray(data))
    cli.send(memoryview(data)[10:20])
    cli.send(memoryview(bytearray(b"xyz")))
    assert cli.send_many([b"a", bytearray(b"b"), memoryview(b"--c--")[2:3]]) == 3
    assert cli.send_many(b"%d" % i for i in range(5)) == 5  # any iterable
    assert cli.send_many([]) == 0
    want = [data, data[10:20], b"xyz", b"a", b"b", b"c"] + [b"%d" % i for i in range(5)]
    assert [srv.recv(timeout=STEP_TIMEOUT) for _ in want] == want
    with pytest.raises(TypeError):
        cli.send("text is not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cli.send_many([b"ok", 12])  # type: ignore[list-item]
    with pytest.raises((TypeError, BufferError, ValueError)):
        cli.send(memoryview(data)[::2])  # not contiguous
    with pytest.raises(ValueError):
        cli.recv_many(max_frames=0)
    # none of the refused calls put anything on the wire
    cli.send(b"end")
    assert srv.recv(timeout=STEP_TIMEOUT) == b"end"


def test_largest_default_frame_round_trip(conn_pair):
    cli, srv = conn_pair()
    payload = bytes(range(256)) * (16 * 2**20 // 256)  # exactly max_frame
    t = start_thread(cli.send, payload, STEP_TIMEOUT, name="big-send")
    got = srv.recv(timeout=STEP_TIMEOUT)
    t.join_result()
    assert got == payload
    with pytest.raises(sk.FrameTooLarge):
        cli.send(payload + b"!")


def test_iteration_raises_on_truncated_stream(raw_to_conn):
    raw, conn = raw_to_conn()
    raw.sendall(encode(b"one") + encode(b"two") + encode_header(10) + b"abc")
    raw.shutdown(socket.SHUT_WR)
    got = []
    with pytest.raises(sk.IncompleteFrame) as ei:
        for m in conn:
            got.append(m)
            assert len(got) <= 2
    assert got == [b"one", b"two"]
    assert ei.value.missing == 7


@pytest.mark.parametrize("header_size", [1, 2])
def test_core_codec_default_max_frame_fits_a_short_header(header_size):
    # like sk.Framing, the 16 MiB default shrinks to what the header carries
    limit = (1 << (8 * header_size)) - 1
    dec = sk.Decoder(header_size=header_size)
    enc = sk.Encoder(header_size=header_size)
    frame = b"x" * limit
    wire = enc.encode(frame)
    assert dec.feed(wire) == [frame]
    with pytest.raises(ValueError, match="does not fit"):  # bad argument
        sk.Decoder(header_size=header_size, max_frame=limit + 1)


def test_decoder_returns_frames_before_an_oversized_header_then_raises():
    dec = sk.Decoder(max_frame=10)
    wire = b"\0\0\0\2hi" + b"\0\0\0\3abc" + b"\0\0\1\0" + b"junk"
    assert dec.feed(wire) == [b"hi", b"abc"]
    for _ in range(2):  # sticky
        with pytest.raises(sk.FrameTooLarge) as ei:
            dec.feed(b"")
        assert ei.value.args and "256-byte" in str(ei.value)
