"""Write the seed corpora of the libFuzzer harnesses (tests/fuzz/corpus/).

    python tests/fuzz/make_corpus.py          # rewrite every seed
    python tests/fuzz/make_corpus.py NAME...  # only these harnesses' seeds

The seeds are committed; rerun this only to change them.  Decoder seeds are
real frame streams encoded with ``struct`` (independent of pysockkit),
preceded by the harness's 10 configuration bytes (see fuzz_decoder.c).
Diag seeds are real NETLINK_SOCK_DIAG replies captured from the running
kernel (a dump of a few loopback sockets in various states, with
INET_DIAG_INFO, and the error reply to a lookup of a socket that does not
exist), preceded by the harness's 8 configuration bytes (fuzz_diag.c).
The corr, send and proxy seeds are small programs in their harness's
operation language (see the comment at the top of each harness).
Stdlib only; every socket opened here is closed; loopback only.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

# ------------------------------------------------------------- decoder

_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}
_HS_BITS = {1: 0, 2: 1, 4: 2, 8: 3}


def frame(payload: bytes, hs: int = 4, little: bool = False) -> bytes:
    return struct.pack(("<" if little else ">") + _CODE[hs], len(payload)) + payload


def control(body: bytes, hs: int = 4, little: bool = False) -> bytes:
    top = 1 << (8 * hs - 1)
    return struct.pack(("<" if little else ">") + _CODE[hs], top | len(body)) + body


def correlated(payload: bytes, cid: int, hs: int = 4, little: bool = False) -> bytes:
    second = 1 << (8 * hs - 2)
    body = struct.pack(">Q", cid) + payload
    return struct.pack(("<" if little else ">") + _CODE[hs], second | len(body)) + body


def ping(ts: int, rtt_us: int = 0xFFFFFFFF) -> bytes:
    return bytes([1]) + struct.pack(">QI", ts, rtt_us)


def pong(ts: int) -> bytes:
    return bytes([2]) + struct.pack(">Q", ts)


def dec_cfg(
    hs: int = 4,
    little: bool = False,
    ctl: bool = False,
    scan: bool = False,
    mode: int = 0,
    idle: bool = False,
    max_frame: int = 65536,
    seed: int = 1,
    ids: bool = False,
) -> bytes:
    b0 = _HS_BITS[hs] | (4 if little else 0) | (8 if ctl else 0) | (16 if scan else 0)
    b0 |= (mode & 3) << 5 | (128 if idle else 0)
    # the harness reduces raw into 1..limit as 1 + raw % limit
    return bytes([b0]) + struct.pack("<Q", max_frame - 1) + bytes([seed, 1 if ids else 0])


def decoder_seeds() -> dict[str, bytes]:
    msgs = [b"hello", b"", b"x" * 300, bytes(range(256)), b"last"]
    s: dict[str, bytes] = {}
    for hs in (1, 2, 4, 8):
        for little in (False, True):
            body = b"".join(frame(m, hs, little) for m in msgs if len(m) < (1 << (8 * hs)))
            name = f"plain_h{hs}_{'le' if little else 'be'}"
            s[name] = dec_cfg(hs, little, mode=(hs + little) % 4, max_frame=1000) + body
    s["reserve_big_frame"] = dec_cfg(4, mode=1, max_frame=1 << 20) + frame(os.urandom(0) + b"\xab" * 3000)
    s["too_large_4gib"] = dec_cfg(4, max_frame=1 << 20) + frame(b"ok") + b"\xff\xff\xff\xff" + b"junk"
    s["too_large_top_bit"] = dec_cfg(4, max_frame=1 << 20) + b"\x80\x00\x00\x05hello"
    s["truncated_payload"] = dec_cfg(2, mode=2) + frame(b"abc", 2) + b"\x00\x10partial"
    s["truncated_header"] = dec_cfg(8, mode=3, idle=True) + frame(b"abc", 8) + b"\x00\x00\x00"
    hb = (
        frame(b"data1")
        + control(ping(123456789, 41))
        + frame(b"data2")
        + control(pong(123456789))
        + control(b"\x07unknown-type")
        + frame(b"")
    )
    s["control_inline"] = dec_cfg(4, ctl=True, max_frame=1 << 16) + hb
    s["control_scan"] = dec_cfg(4, ctl=True, scan=True, mode=2, max_frame=1 << 16) + hb
    s["control_h1_le"] = (
        dec_cfg(1, little=True, ctl=True, scan=True, max_frame=127)
        + frame(b"a", 1)
        + control(pong(5), 1)
        + frame(b"b", 1)
    )
    s["control_bad_size"] = dec_cfg(2, ctl=True) + frame(b"a", 2) + b"\x80\x00"
    s["correlated"] = (
        dec_cfg(4, ids=True, mode=2, max_frame=1 << 16)
        + frame(b"plain")
        + correlated(b"request", 7)
        + correlated(b"reply", 7 | 1 << 63)
        + correlated(b"", 8)
    )
    s["correlated_control_le"] = (
        dec_cfg(2, little=True, ctl=True, scan=True, ids=True, max_frame=1000)
        + correlated(b"req", 1, 2, True)
        + control(ping(5), 2, True)
        + correlated(b"x" * 300, 2**63 + 1, 2, True)
    )
    s["correlated_short_id"] = dec_cfg(4, ids=True) + b"\x40\x00\x00\x04abcd"
    return s


# ---------------------------------------------------------------- diag

NLMSG_ERROR, NLMSG_DONE = 2, 3
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
INET_DIAG_INFO = 2
NLMSG_HDR = struct.Struct("=IHHII")


def _diag_req(family: int, seq: int, dump: bool, sport: int = 0, dport: int = 0,
              src: bytes = b"", dst: bytes = b"") -> bytes:
    ext = 1 << (INET_DIAG_INFO - 1)
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, ext, 0, 0xFFFFFFFF if not dump else 0x1FFE)
    req += struct.pack(">HH", sport, dport) + src.ljust(16, b"\0") + dst.ljust(16, b"\0")
    req += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(req), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + req


def _netlink_exchange(req: bytes) -> list[bytes]:
    """Send one request, return the datagrams until DONE/ERROR (max 50)."""
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as nl:  # NETLINK_SOCK_DIAG
        nl.settimeout(5.0)
        nl.sendto(req, (0, 0))
        for _ in range(50):
            data = nl.recv(65536)
            out.append(data)
            types = [t for t, _ in _messages(data)]
            if NLMSG_DONE in types or NLMSG_ERROR in types:
                break
    return out


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos + NLMSG_HDR.size <= len(data):
        ln, typ, _f, _s, _p = NLMSG_HDR.unpack_from(data, pos)
        if ln < NLMSG_HDR.size or pos + ln > len(data):
            break
        out.append((typ, data[pos : pos + ln]))
        pos += (ln + 3) & ~3
    return out


def _ports_of(msg: bytes) -> tuple[int, int]:
    sport, dport = struct.unpack_from(">HH", msg, NLMSG_HDR.size + 4)
    return sport, dport


def diag_cfg(seq: int, flags: int, port: int = 0, which: int = 0, states: int = 0) -> bytes:
    return struct.pack("=I", seq) + bytes([flags]) + struct.pack("<H", port) + bytes([which | states << 2])


def diag_seeds() -> dict[str, bytes]:
    seq = 0x736B0001
    seeds: dict[str, bytes] = {}
    for fam, host, tag in ((socket.AF_INET, "127.0.0.1", "v4"), (socket.AF_INET6, "::1", "v6")):
        with socket.socket(fam, socket.SOCK_STREAM) as ls:
            ls.bind((host, 0))
            ls.listen(4)
            port = ls.getsockname()[1]
            cli = socket.socket(fam, socket.SOCK_STREAM)
            cli.connect((host, port))
            srv, _ = ls.accept()
            cli.sendall(b"x" * 1000)  # unread bytes: a nonzero rqueue
            tw = socket.socket(fam, socket.SOCK_STREAM)
            tw.connect((host, port))
            tws, _ = ls.accept()
            tw.close()  # the client side goes FIN_WAIT -> TIME_WAIT
            tws.close()
            time.sleep(0.05)
            try:
                keep = []
                for dgram in _netlink_exchange(_diag_req(fam, seq, True)):
                    for typ, msg in _messages(dgram):
                        if typ == SOCK_DIAG_BY_FAMILY and port in _ports_of(msg):
                            keep.append(msg)
                        elif typ in (NLMSG_DONE, NLMSG_ERROR):
                            keep.append(msg)
                body = b"".join(m + b"\0" * (-len(m) % 4) for m in keep)
                seeds[f"dump_{tag}_info"] = diag_cfg(seq, 0b10) + body
                seeds[f"dump_{tag}_filtered"] = diag_cfg(seq, 0b11 | (1 << 3 if tag == "v4" else 2 << 3), port, 2) + body
                seeds[f"dump_{tag}_stop"] = diag_cfg(seq, 0b111) + body
            finally:
                srv.close()
                cli.close()
        # an exact lookup of a socket that does not exist: NLMSG_ERROR -ENOENT
        addr = socket.inet_pton(fam, host)
        reply = _netlink_exchange(_diag_req(fam, seq + 1, False, 1, 1, addr, addr))
        seeds[f"lookup_{tag}_enoent"] = diag_cfg(seq + 1, 0) + b"".join(reply)
    seeds["done_only"] = diag_cfg(7, 0) + NLMSG_HDR.pack(20, NLMSG_DONE, 2, 7, 0) + b"\0\0\0\0"
    return seeds


# ---------------------------------------------------------------- corr

# operations of fuzz_corr.c: (code, takes an argument byte)
C_ADD, C_REPLY, C_STRANGER, C_EXPIRE, C_REMOVE, C_CANCEL, C_TAKE_ALL, C_FAIL = range(8)


def corr_prog(*ops: tuple[int, int] | int) -> bytes:
    out = bytearray()
    for op in ops:
        if isinstance(op, tuple):
            out += bytes([op[0], op[1] & 0xFF])
        else:
            out.append(op)
    return bytes(out)


def corr_seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    s["add_reply_expire"] = corr_prog(
        *[(C_ADD, 5 + i) for i in range(5)],
        (C_REPLY, 0), (C_REPLY, 0x80 | 1), (C_EXPIRE, 20), (C_REPLY, 2),
        C_STRANGER, (C_REPLY, 0), C_TAKE_ALL,
    )
    s["long_payloads"] = corr_prog(
        (C_ADD, 0x80), (C_ADD, 0x80), (C_ADD, 3), (C_REPLY, 100), (C_REPLY, 0x80 | 43 + 1),
        (C_REPLY, 2), C_TAKE_ALL,
    )
    s["cancel_remove"] = corr_prog(
        (C_ADD, 9), (C_CANCEL, 0), (C_REPLY, 0), (C_ADD, 9), (C_CANCEL, 0), (C_EXPIRE, 31),
        (C_ADD, 0x80), (C_REMOVE, 0), (C_REPLY, 0), (C_REMOVE, 0),
    )
    s["many"] = corr_prog(*[(C_ADD, i % 64) for i in range(200)], (C_EXPIRE, 31),
                          (C_EXPIRE, 31), (C_EXPIRE, 31), *[(C_REPLY, i) for i in range(0, 200, 7)])
    s["faults"] = corr_prog(
        C_FAIL, (C_ADD, 1), *[(C_ADD, 2) for _ in range(70)], C_FAIL, (C_REPLY, 0x7F),
        C_FAIL, (C_EXPIRE, 10), (C_REPLY, 3), C_FAIL, (C_REMOVE, 5), C_FAIL, C_TAKE_ALL,
    )
    return s


# ---------------------------------------------------------------- send

def send_cfg(hs: int = 4, little: bool = False, ctl: bool = False, ids: bool = False,
             hb: bool = False, maxc: int = 0) -> bytes:
    b0 = _HS_BITS[hs] | (4 if little else 0) | (8 if ctl else 0) | (16 if ids else 0)
    return bytes([b0 | (32 if hb else 0) | maxc << 6])


def send_len(n: int) -> int:
    """fuzz_send.c's length byte for a frame of n bytes (n < 64)."""
    return n << 2


def send_seeds() -> dict[str, bytes]:
    ALL = b"\xff"  # the fake kernel takes (nearly) everything
    s: dict[str, bytes] = {}
    # op 0x01: a batch of 1 without a deadline; 0x29: 6 frames; 0x00: with one
    s["plain_h4"] = send_cfg() + bytes([0x01, send_len(10)]) + ALL * 2 + bytes([0x29]) + bytes(
        [send_len(i) for i in range(6)]) + ALL * 4
    s["torn_then_flush"] = send_cfg(2, True) + bytes([0x00, 0x02 | 0x3C, 0x04, 0x00, 0x03,
                                                      0x0B]) + ALL * 8
    s["enqueue_then_send"] = send_cfg(8) + bytes([0x02, send_len(3), 0x0A, send_len(60),
                                                  0x01, 0x01]) + b"\x2c\x00\x10" + ALL * 4
    s["control_pong_owed"] = send_cfg(4, ctl=True, hb=True) + bytes([0x05, 0x0C, 0x04, 0x01, send_len(5)]) + \
        b"\x1c\x00\x1c\x01" + ALL * 4
    s["ids_le"] = send_cfg(4, True, ids=True) + bytes([0x41, send_len(7), 0xC9]) + bytes(
        [send_len(1), 0x03, 0x05, 0x07, 0x09, 0x0B]) + ALL * 6
    s["too_large"] = send_cfg(2, maxc=1) + bytes([0x01, 0x03, 0x09, send_len(1), 0x03]) + ALL * 2
    s["interrupt_and_reset"] = send_cfg(1, ctl=True) + bytes([0x41, send_len(40), 0x02, 0x02, 0x00,
                                                               0x00, 0xFB])
    s["fault_on_tail"] = send_cfg(4, ctl=True) + bytes([0x06, 0x00, 0x02 | 0xF0, 0x1C, 0x00, 0x06,
                                                         0x05, 0x01, send_len(0), 0x1C, 0x00])
    return s


# ---------------------------------------------------------------- proxy

P_FAULT, P_UNFAULT, P_OPEN, P_DATA, P_ERROR, P_WINDOW, P_TIME, P_FAIL = range(8)
BOTH = 3 << 3  # fault directions, bits 3-4 of the kind byte


def px(op: int, a: int = 0, b: int = 0, c: int = 0) -> bytes:
    return bytes([op, a & 0xFF, b & 0xFF, c & 0xFF])


def px_ms(ms: int) -> bytes:
    """fuzz_proxy.c's time step of about ms milliseconds (10 ms units)."""
    return px(P_TIME, 0x80 | min(ms // 10, 127), 0)


def proxy_seeds() -> dict[str, bytes]:
    cfg = bytes([1, 42])  # 2 KiB buffers
    traffic = (
        px(P_OPEN, 1) + px(P_DATA, 0, 0, 20) + px(P_DATA, 1, 0, 9) + px_ms(30)
        + px(P_DATA, 0, 0, 200) + px_ms(100) + px(P_DATA, 2, 0) + px(P_DATA, 3, 0) + px_ms(500)
    )
    s: dict[str, bytes] = {}
    s["latency_jitter"] = cfg + px(P_FAULT, 0 | BOTH, 20, 10) + traffic
    s["bandwidth"] = cfg + px(P_FAULT, 1 | BOTH, 10, 10) + traffic + px_ms(1000)
    s["stall_then_remove"] = cfg + px(P_FAULT, 2 | BOTH, 0) + traffic + px(P_UNFAULT, 0) + px_ms(10)
    s["stall_timeout"] = cfg + px(P_FAULT, 2 | BOTH, 3) + traffic
    s["reset_peer"] = cfg + px(P_FAULT, 3 | 1 << 3, 10) + traffic
    s["slow_close"] = cfg + px(P_FAULT, 4 | BOTH, 30) + traffic + px_ms(100)
    s["slicer"] = cfg + px(P_FAULT, 5 | BOTH | 1 << 5, 10, 3) + traffic + px_ms(300)
    s["limit_data"] = cfg + px(P_FAULT, 6 | 2 << 3, 2, 0) + traffic
    s["window_and_errors"] = (
        cfg + px(P_OPEN, 0) + px(P_DATA, 0, 0, 100) + px(P_WINDOW, 1, 0, 3) + px_ms(10)
        + px(P_WINDOW, 1, 0, 255) + px(P_ERROR, 1, 0) + px(P_OPEN, 1) + px(P_DATA, 1, 1, 5)
        + px(P_ERROR, 4, 1) + px_ms(10)
    )
    s["connect_refused_and_nomem"] = cfg + px(P_OPEN, 6) + px(P_FAIL) + px(P_OPEN, 1) + px(P_FAIL) + px(
        P_OPEN, 1) + px(P_DATA, 0, 0, 1)
    s["many_faults"] = cfg + b"".join(px(P_FAULT, k | BOTH, 3, 2) for k in range(8)) + traffic + px(
        P_UNFAULT, 3) + px(P_UNFAULT, 0) + px_ms(200)
    return s
def _lo_up() -> None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, ifr)[:18])[1]  # SIOCGIFFLAGS
        if not flags & 1:
            fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS
            time.sleep(0.05)  # ::1 appears a moment later


def capture_seeds() -> dict[str, bytes]:
    ETH_P_ALL, PACKET_OUTGOING = 3, 4
    _lo_up()
    seeds: dict[str, bytes] = {}
    for fam, host, tag, sel in ((socket.AF_INET, "127.0.0.1", "v4", 1),
                                (socket.AF_INET6, "::1", "v6", 2)):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            raw.bind(("lo", ETH_P_ALL))
            with socket.socket(fam, socket.SOCK_STREAM) as ls:
                ls.bind((host, 0))
                ls.listen(1)
                port = ls.getsockname()[1]
                cli = socket.create_connection((host, port))
                srv, _ = ls.accept()
                cli.sendall(struct.pack(">I", 5) + b"hello")
                srv.recv(64)
                cli.close()
                srv.close()
            raw.settimeout(0.2)
            pkts: list[bytes] = []
            while True:
                try:
                    data, addr = raw.recvfrom(65536)
                except socket.timeout:
                    break
                off = 20 if fam == socket.AF_INET else 40
                if addr[2] == PACKET_OUTGOING or len(data) < off + 20:
                    continue
                if port in struct.unpack_from(">HH", data, off):
                    pkts.append(data)
        finally:
            raw.close()
        names = ["syn", "synack", "ack", "data", "data_ack", "fin", "fin2", "last"]
        for name, pkt in zip(names, pkts):
            seeds[f"{tag}_{name}"] = bytes([sel, 0, 0, 1 + len(name) % 3]) + pkt
        if len(pkts) > 3:
            # the data segment cut by a snap length: 2 payload bytes kept
            hdr = len(pkts[3]) - 9
            seeds[f"{tag}_data_snapped"] = bytes([sel | 1 << 2, 0, 0, 0]) + pkts[3][:hdr + 2]
    # IPv6 with a hop-by-hop and a destination-options header before TCP
    tcp = struct.pack(">HHIIBBHHH", 40000, 5000, 1, 2, 5 << 4, 0x18, 512, 0, 0) + b"hi"
    ext = bytes([60, 0]) + bytes(6) + bytes([6, 1]) + bytes(14)
    ip6 = struct.pack(">IHBB", 6 << 28, len(ext) + len(tcp), 0, 64) + bytes(15) + b"\1" + bytes(15) + b"\2"
    seeds["v6_ext_headers"] = bytes([0, 0, 0, 16]) + ip6 + ext + tcp
    return seeds


def write(name: str, seeds: dict[str, bytes]) -> None:
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for k, v in sorted(seeds.items()):
        (d / k).write_bytes(v)
    print(f"{d.relative_to(HERE.parent.parent)}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


SEEDS = {
    "fuzz_decoder": decoder_seeds,
    "fuzz_diag": diag_seeds,
    "fuzz_corr": corr_seeds,
    "fuzz_send": send_seeds,
    "fuzz_proxy": proxy_seeds,
    "fuzz_capture": capture_seeds,
}

if __name__ == "__main__":
    import sys

    for harness in sys.argv[1:] or list(SEEDS):
        write(harness, SEEDS[harness]())
