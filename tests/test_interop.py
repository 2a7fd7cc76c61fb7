"""pysockkit against a peer written with the standard library only.

The stdlib side here uses nothing but ``socket`` and ``struct``: the frame
format is ``struct.pack(">I", len(payload)) + payload`` (4-byte big endian,
the default) or ``"<H"`` (2-byte little endian)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

import pysockkit as sk
from helpers import scaled

TIMEOUT = scaled(10.0)

FORMATS = {
    # (header_size, byteorder): struct format
    (1, "big"): ">B",
    (1, "little"): "<B",
    (2, "big"): ">H",
    (2, "little"): "<H",
    (4, "big"): ">I",
    (4, "little"): "<I",
    (8, "big"): ">Q",
    (8, "little"): "<Q",
}


# ------------------------------------------------------ stdlib-only peer


def std_read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def std_send(s: socket.socket, payload: bytes, fmt: str = ">I") -> None:
    s.sendall(struct.pack(fmt, len(payload)) + payload)


def std_recv(s: socket.socket, fmt: str = ">I") -> bytes:
    (n,) = struct.unpack(fmt, std_read_exact(s, struct.calcsize(fmt)))
    return std_read_exact(s, n)


def std_recv_or_eof(s: socket.socket, fmt: str = ">I"):
    head = s.recv(struct.calcsize(fmt), socket.MSG_WAITALL)
    if head == b"":
        return None
    (n,) = struct.unpack(fmt, head)
    return std_read_exact(s, n)


class StdServer:
    """A stdlib TCP server in a thread: for each connection, answer every
    frame with b"std:" + frame until EOF, then close."""

    def __init__(self, fmt: str = ">I", connections: int = 1):
        self.fmt = fmt
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(TIMEOUT)
        self.address = self.ls.getsockname()
        self.received: list[bytes] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(connections,), daemon=True)
        self.thread.start()

    def _run(self, connections: int) -> None:
        try:
            for _ in range(connections):
                s, _ = self.ls.accept()
                with s:
                    s.settimeout(TIMEOUT)
                    while True:
                        msg = std_recv_or_eof(s, self.fmt)
                        if msg is None:
                            break
                        self.received.append(msg)
                        std_send(s, b"std:" + msg, self.fmt)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.thread.join(TIMEOUT)
        self.ls.close()
        assert not self.thread.is_alive(), "stdlib server still running"
        if self.error is not None:
            raise self.error


@pytest.fixture
def std_server():
    servers: list[StdServer] = []

    def make(fmt: str = ">I", connections: int = 1) -> StdServer:
        s = StdServer(fmt, connections)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


PAYLOADS = [b"", b"x", b"hello world", bytes(range(256)), b"\xff" * 70_000]


# ------------------------------------------------ stdlib client, sk server


@pytest.mark.parametrize("framing_key", [(4, "big"), (2, "little")])
def test_stdlib_client_to_pysockkit_server(framing_key):
    header_size, byteorder = framing_key
    fmt = FORMATS[framing_key]
    framing = sk.Framing(header_size=header_size, byteorder=byteorder)
    payloads = [p for p in PAYLOADS if len(p) <= framing.max_frame]
    with sk.listen(("127.0.0.1", 0), framing=framing) as lst:
        with socket.create_connection(lst.address, timeout=TIMEOUT) as s:
            with lst.accept(timeout=TIMEOUT) as conn:
                for p in payloads:
                    std_send(s, p, fmt)
                for p in payloads:
                    assert conn.recv(timeout=TIMEOUT) == p
                # and back: the exact bytes on the wire are the struct layout
                for p in payloads:
                    conn.send(b"sk:" + p)
                conn.send_many([b"many1", b"many2"])
                expected = b"".join(struct.pack(fmt, len(b"sk:" + p)) + b"sk:" + p for p in payloads)
                expected += struct.pack(fmt, 5) + b"many1" + struct.pack(fmt, 5) + b"many2"
                assert std_read_exact(s, len(expected)) == expected
                # a stdlib close is an orderly end of stream for pysockkit
                s.shutdown(socket.SHUT_WR)
                with pytest.raises(sk.ConnectionClosed):
                    conn.recv(timeout=TIMEOUT)


# ------------------------------------------------ sk client, stdlib server


@pytest.mark.parametrize("framing_key", sorted(FORMATS))
def test_pysockkit_client_to_stdlib_server(std_server, framing_key):
    header_size, byteorder = framing_key
    fmt = FORMATS[framing_key]
    framing = sk.Framing(header_size=header_size, byteorder=byteorder)
    server = std_server(fmt)
    payloads = [p for p in PAYLOADS if len(p) + 4 <= framing.max_frame]
    with sk.connect(server.address, timeout=TIMEOUT, framing=framing) as conn:
        for p in payloads:
            assert conn.request(p, timeout=TIMEOUT) == b"std:" + p
        conn.send_many([b"a", b"b"])
        assert conn.recv(timeout=TIMEOUT) == b"std:a"
        assert conn.recv(timeout=TIMEOUT) == b"std:b"
        conn.shutdown("write")
        with pytest.raises(sk.ConnectionClosed):
            conn.recv(timeout=TIMEOUT)
    server.close()
    assert server.received == payloads + [b"a", b"b"]


def test_stdlib_server_and_call(std_server):
    server = std_server(">I", connections=20)
    for i in range(20):
        assert sk.call(server.address, b"call%d" % i, timeout=TIMEOUT) == b"std:call%d" % i
    server.close()
    assert server.received == [b"call%d" % i for i in range(20)]


def test_stdlib_server_and_call_little_endian(std_server):
    server = std_server("<H", connections=1)
    f = sk.Framing(header_size=2, byteorder="little")
    assert sk.call(server.address, b"le", timeout=TIMEOUT, framing=f) == b"std:le"
    server.close()


def test_framing_encode_is_what_stdlib_reads():
    for key, fmt in FORMATS.items():
        f = sk.Framing(header_size=key[0], byteorder=key[1])
        for p in (b"", b"abc", bytes(200)):
            assert f.encode(p) == struct.pack(fmt, len(p)) + p


# ------------------------------------------------------ addresses, IPv6


def test_connect_by_host_name(std_server):
    server = std_server(">I")
    port = server.address[1]
    # "localhost" may resolve to ::1 first; the IPv4 listener must still be found
    with sk.connect(("localhost", port), timeout=TIMEOUT) as conn:
        assert conn.remote_address == ("127.0.0.1", port)
        assert conn.request(b"by name", timeout=TIMEOUT) == b"std:by name"
    server.close()


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_loopback_with_stdlib_peer():
    with sk.listen(("::1", 0)) as lst:
        assert lst.address[0] == "::1"
        with socket.create_connection(lst.address[:2], timeout=TIMEOUT) as s:
            with lst.accept(timeout=TIMEOUT) as conn:
                assert conn.local_address == lst.address
                assert conn.remote_address[1] == s.getsockname()[1]
                std_send(s, b"over v6")
                assert conn.recv(timeout=TIMEOUT) == b"over v6"
                conn.send(b"back")
                assert std_recv(s) == b"back"
