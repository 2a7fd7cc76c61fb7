"""Property tests of the Python layer over real loopback sockets (issue 7).

Hypothesis draws a framing, a list of frames (sizes from 0 to a few hundred
KiB, well past the socket buffers), how the peer cuts the byte stream into
writes (with pauses), and a timeout for every receive or send call: zero,
a millisecond or two, or long.  Whatever the draw:

* receiving (stdlib peer -> pysockkit Connection): every frame comes out
  exactly once, in order, whether taken by ``recv`` or ``recv_many``; a
  timeout loses nothing; a clean end gives ``ConnectionClosed``, a stream
  cut inside a frame ``IncompleteFrame`` with the right ``missing``;
* sending (pysockkit Connection -> slow stdlib reader): a send that times
  out takes ``exc.sent`` frames, no more and no less, and the reader sees
  exactly the frames taken, in order, never a torn one.

Bounded: a fixed number of examples each (about 10 s in all on a laptop);
``database=None`` so nothing is written to the source tree.  A failure
prints the drawn example; rerun with the printed ``@reproduce_failure``.
"""

from __future__ import annotations

import random
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

import pysockkit as sk
from helpers import STEP_TIMEOUT, decode_stream, encode, scaled, set_nodelay

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# keep Hypothesis's cache out of the source tree
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "pysockkit-hypothesis")

FRAMINGS = [(1, "big"), (1, "little"), (2, "big"), (2, "little"), (4, "big"), (4, "little"), (8, "big"), (8, "little")]
LIMIT = {1: 255, 2: 65535, 4: 1 << 20, 8: 1 << 20}
LONG = STEP_TIMEOUT  # "wait": long enough never to fire unless something hangs

# No shrinking: a failure is reported at once with the drawn example (its
# seed printed by Hypothesis), instead of minutes of shrinking over sockets.
COMMON = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def streams(draw: st.DrawFn) -> dict:
    hs, order = draw(st.sampled_from(FRAMINGS))
    limit = LIMIT[hs]
    small = st.integers(0, min(limit, 300))
    medium = st.integers(0, min(limit, 5000))
    large = st.integers(min(limit, 60_000), min(limit, 400_000))
    sizes = draw(st.lists(st.one_of(small, small, medium, large), min_size=0, max_size=40))
    # at most ~1.5 MiB per example
    total = 0
    kept = []
    for n in sizes:
        if total + n > 1_500_000:
            break
        kept.append(n)
        total += n
    return {
        "hs": hs,
        "order": order,
        "sizes": kept,
        "seed": draw(st.integers(0, 2**32 - 1)),
        # the writes cycle through these sizes; the last one is always large,
        # which bounds the time a draw of tiny writes and pauses can take
        "chunks": draw(st.lists(st.integers(1, 70_000), min_size=0, max_size=20)) + [70_000],
        "pauses": draw(st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.0005, 0.002]), min_size=1, max_size=10)),
        "timeouts": draw(st.lists(st.sampled_from([0.0, 0.0005, 0.002, 0.01, LONG]), min_size=1, max_size=10)),
        "ops": draw(st.lists(st.sampled_from(["recv", "recv_many", "recv_many1"]), min_size=1, max_size=6)),
        "tail": draw(st.sampled_from([None, None, "header", "payload"])),
    }


def _payloads(sizes: list[int], seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in sizes]


def _pair(framing: sk.Framing, rcvbuf: Optional[int] = None) -> tuple[socket.socket, sk.Connection]:
    """(raw stdlib client, pysockkit server-side Connection) on loopback."""
    with sk.listen(("127.0.0.1", 0), framing=framing) as srv:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            set_nodelay(raw)
            raw.settimeout(STEP_TIMEOUT)
            raw.connect(srv.address)
            conn = srv.accept(timeout=STEP_TIMEOUT)
        except BaseException:
            raw.close()
            raise
    return raw, conn


def _cycle(seq: list, i: int):
    return seq[i % len(seq)]


# ------------------------------------------------------------- receive


@settings(COMMON, max_examples=200)
@given(streams())
def test_receive_random_stream_every_byte_once_in_order(s: dict) -> None:
    hs, order = s["hs"], s["order"]
    framing = sk.Framing(header_size=hs, byteorder=order, max_frame=LIMIT[hs])
    payloads = _payloads(s["sizes"], s["seed"])
    wire = b"".join(encode(p, hs, order) for p in payloads)
    missing = 0
    if s["tail"] == "header" and hs > 1:
        wire += encode(b"xyz", hs, order)[: hs - 1]
        missing = 1
    elif s["tail"] == "payload":
        wire += encode(b"0123456789", hs, order)[: hs + 4]
        missing = 6

    raw, conn = _pair(framing)
    sent_error: list[BaseException] = []

    def sender() -> None:
        try:
            pos = i = 0
            while pos < len(wire):
                n = _cycle(s["chunks"], i)
                raw.sendall(wire[pos : pos + n])
                pos += n
                pause = _cycle(s["pauses"], i)
                if pause:
                    time.sleep(pause)
                i += 1
            raw.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported by the test thread
            sent_error.append(exc)

    t = threading.Thread(target=sender, daemon=True)
    got: list[bytes] = []
    timeouts = 0
    try:
        t.start()
        i = 0
        deadline = time.monotonic() + scaled(30)
        while len(got) < len(payloads):
            assert time.monotonic() < deadline, f"stuck after {len(got)} of {len(payloads)} frames"
            op, tmo = _cycle(s["ops"], i), _cycle(s["timeouts"], i)
            i += 1
            try:
                if op == "recv":
                    got.append(conn.recv(timeout=tmo))
                else:
                    more = conn.recv_many(max_frames=1 if op == "recv_many1" else 4096, timeout=tmo)
                    assert 1 <= len(more) <= (1 if op == "recv_many1" else 4096)
                    got.extend(more)
            except sk.Timeout:
                timeouts += 1
                continue
            # compare as we go: a mismatch names the first bad frame
            k = len(got) - 1
            assert len(got) <= len(payloads), "more frames than were sent"
            assert got[k] == payloads[k], f"frame {k} differs ({len(got[k])} vs {len(payloads[k])} bytes)"
        assert got == payloads
        # the end of the stream: typed and sticky
        for _ in range(2):
            if s["tail"] is None or (s["tail"] == "header" and hs == 1):
                with pytest.raises(sk.ConnectionClosed):
                    conn.recv(timeout=LONG)
            else:
                with pytest.raises(sk.IncompleteFrame) as ei:
                    conn.recv(timeout=LONG)
                assert ei.value.missing == missing
        t.join(STEP_TIMEOUT)
        assert not t.is_alive()
        assert not sent_error, sent_error
    finally:
        conn.close()
        raw.close()
        t.join(STEP_TIMEOUT)


# ---------------------------------------------------------------- send


@st.composite
def send_plans(draw: st.DrawFn) -> dict:
    hs, order = draw(st.sampled_from(FRAMINGS))
    limit = LIMIT[hs]
    sizes = draw(
        st.lists(
            st.one_of(st.integers(0, min(limit, 200)), st.integers(0, min(limit, 100_000))),
            min_size=1,
            max_size=20,
        )
    )
    return {
        "hs": hs,
        "order": order,
        "sizes": sizes,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "batch": draw(st.lists(st.integers(1, 8), min_size=1, max_size=6)),
        "timeouts": draw(st.lists(st.sampled_from([0.0, 0.0005, 0.002, 0.01, LONG]), min_size=1, max_size=8)),
        # reads cycle through these sizes; the last one is always large (a
        # bound on the time tiny reads with pauses can take)
        "reads": draw(st.lists(st.sampled_from([1, 7, 100, 4096, 65536]), min_size=0, max_size=8)) + [65536],
        "pauses": draw(st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.0005, 0.002]), min_size=1, max_size=8)),
    }


@settings(COMMON, max_examples=150)
@given(send_plans())
def test_send_with_random_timeouts_never_tears_or_repeats(s: dict) -> None:
    hs, order = s["hs"], s["order"]
    framing = sk.Framing(header_size=hs, byteorder=order, max_frame=LIMIT[hs])
    payloads = _payloads(s["sizes"], s["seed"])
    raw, conn = _pair(framing, rcvbuf=4096)
    # a small send buffer on our side too, so that sends do time out
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as view:
        view.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    received = bytearray()
    read_error: list[BaseException] = []

    def reader() -> None:
        try:
            i = 0
            raw.settimeout(30)
            while True:
                chunk = raw.recv(_cycle(s["reads"], i))
                if not chunk:
                    return
                received.extend(chunk)
                pause = _cycle(s["pauses"], i)
                if pause:
                    time.sleep(pause)
                i += 1
        except BaseException as exc:
            read_error.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    taken = 0
    i = 0
    try:
        t.start()
        deadline = time.monotonic() + scaled(30)
        while taken < len(payloads):
            assert time.monotonic() < deadline, f"stuck after {taken} of {len(payloads)} frames"
            n, tmo = _cycle(s["batch"], i), _cycle(s["timeouts"], i)
            i += 1
            batch = payloads[taken : taken + n]
            try:
                if len(batch) == 1 and i % 2:
                    conn.send(batch[0], timeout=tmo)
                    taken += 1
                else:
                    assert conn.send_many(batch, timeout=tmo) == len(batch)
                    taken += len(batch)
            except sk.Timeout as exc:
                sent = exc.sent
                assert 0 <= sent <= len(batch)
                taken += sent
        conn.flush(timeout=LONG)
        assert conn.unsent == 0
        conn.shutdown("write", timeout=LONG)
        t.join(30)
        assert not t.is_alive(), "reader did not see EOF"
        assert not read_error, read_error
        frames, outcome, detail = decode_stream(bytes(received), hs, order, LIMIT[hs])
        assert outcome == "closed", (outcome, detail)
        assert len(frames) == len(payloads)
        for k, (a, b) in enumerate(zip(frames, payloads)):
            assert a == b, f"frame {k} differs"
    finally:
        conn.close()
        raw.close()
        t.join(STEP_TIMEOUT)
