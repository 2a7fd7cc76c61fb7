"""Quick start: a server and a client in one process, on loopback.

Run: python examples/quickstart.py
"""

import pysockkit as sk

with sk.serve(("127.0.0.1", 0), handler=lambda msg: msg.upper()) as server:
    with sk.connect(server.address, timeout=2.0) as conn:
        conn.send(b"hello")
        print("recv    ->", conn.recv(timeout=2.0))
        print("request ->", conn.request(b"ping", timeout=2.0))
        conn.send_many([b"a", b"b", b"c"])
        got = []
        while len(got) < 3:
            got += conn.recv_many(timeout=2.0)
        print("batch   ->", got)
    print("call    ->", sk.call(server.address, b"short connection", timeout=2.0))
