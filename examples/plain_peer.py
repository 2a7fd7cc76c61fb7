"""Interop: a peer written with nothing but the standard library talks to
pysockkit.  The wire format is [4-byte big-endian length][payload].

Run: python examples/plain_peer.py
"""

import socket
import struct

import pysockkit as sk


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return buf


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    return recv_exact(sock, length)


with sk.serve(("127.0.0.1", 0), handler=lambda m: b"pysockkit got " + m) as server:
    with socket.create_connection(server.address, timeout=2.0) as plain:
        send_frame(plain, b"hello from the stdlib")
        print(recv_frame(plain).decode())
