"""pysockkit: framed TCP with a C core.

Length-prefixed messages over TCP with timeouts that lose no data, and live
observation of TCP connection state (TCP_INFO, sock_diag).

Example::

    import pysockkit as sk

    with sk.listen(("127.0.0.1", 0)) as srv, sk.connect(srv.address) as cli:
        peer = srv.accept()
        cli.send(b"hello")
        assert peer.recv(timeout=1.0) == b"hello"
        peer.close()
"""

from ._version import __version__
from ._errors import (
    ConnectionClosed,
    ConnectionReset,
    Error,
    FrameTooLarge,
    IncompleteFrame,
    PeerDead,
    RemoteError,
    Timeout,
)
from ._types import Framing, Heartbeat, Keepalive
from ._conn import Address, Connection, Listener, call, connect, listen
from ._core import Decoder, Encoder
from ._handler import ServerExits
from ._server import Server, serve
from ._enums import TcpState
from ._observe import SocketEntry, SocketList, TcpInfo, find_socket, sockets, tcp_info
from ._watch import InfoSample, StateTrace, watch
from ._diagram import StateDiagram, state_diagram
from . import aio, lab, simplex
from ._proxy import (
    Bandwidth,
    FaultHandle,
    FaultProxy,
    Latency,
    LimitData,
    ProxiedConnection,
    ProxyStats,
    ResetPeer,
    Slicer,
    SlowClose,
    Stall,
)

__all__ = [
    "__version__",
    # configuration
    "Framing",
    "Heartbeat",
    "Keepalive",
    # connections
    "Address",
    "Connection",
    "Listener",
    "listen",
    "connect",
    "call",
    "serve",
    "Server",
    "ServerExits",
    "Decoder",
    "Encoder",
    # observation
    "TcpState",
    "TcpInfo",
    "SocketEntry",
    "SocketList",
    "tcp_info",
    "sockets",
    "find_socket",
    "watch",
    "StateTrace",
    "InfoSample",
    "state_diagram",
    "StateDiagram",
    "aio",
    "lab",
    "simplex",
    # testing
    "FaultProxy",
    "FaultHandle",
    "ProxyStats",
    "ProxiedConnection",
    "Latency",
    "Bandwidth",
    "Stall",
    "ResetPeer",
    "SlowClose",
    "Slicer",
    "LimitData",
    # errors
    "Error",
    "Timeout",
    "FrameTooLarge",
    "IncompleteFrame",
    "ConnectionClosed",
    "ConnectionReset",
    "PeerDead",
    "RemoteError",
]
