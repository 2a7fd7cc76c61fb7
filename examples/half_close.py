"""Half-close versus close versus abort, seen from the server.

Run: python examples/half_close.py
"""

import pysockkit as sk

with sk.listen(("127.0.0.1", 0)) as listener:
    # half-close: the client sends FIN but can still read the answer
    with sk.connect(listener.address, timeout=2.0) as client, listener.accept(timeout=2.0) as server:
        client.send(b"all my data")
        client.shutdown("write")
        print("server got     :", server.recv(timeout=2.0))
        try:
            server.recv(timeout=2.0)
        except sk.ConnectionClosed:
            print("server sees    : FIN (ConnectionClosed) after the last frame")
        server.send(b"reply after FIN")
        print("client still reads:", client.recv(timeout=2.0))

    # abort: RST, the peer gets ConnectionReset
    with sk.connect(listener.address, timeout=2.0) as client, listener.accept(timeout=2.0) as server:
        client.abort()
        try:
            server.recv(timeout=2.0)
        except sk.ConnectionReset:
            print("server sees    : RST (ConnectionReset)")
