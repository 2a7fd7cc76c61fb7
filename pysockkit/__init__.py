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

try:
    from ._core import Decoder, Encoder
except ModuleNotFoundError as _exc:
    # The C extension is missing: most often Python runs in the root of a
    # clone, where the source folder pysockkit/ (never built) comes first on
    # sys.path and hides any installed copy.  Say so, instead of the
    # "partially initialized module" error that the next import would give.
    if _exc.name != __name__ + "._core":
        raise
    import glob as _glob
    import os as _os
    import sysconfig as _sysconfig

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _suffix = _sysconfig.get_config_var("EXT_SUFFIX")
    _other = sorted(_os.path.basename(p) for p in _glob.glob(_os.path.join(_here, "_core*.so")))
    _msg = f"pysockkit's C extension (pysockkit._core{_suffix}) is not built in {_here}"
    if _other:
        _msg += f" (only {', '.join(_other)}, built for another Python)"
    if _os.path.exists(_os.path.join(_here, _os.pardir, "setup.py")):
        _msg += (". This is a source folder: you are probably running Python from the root"
                 " of a clone, where pysockkit/ comes first on sys.path and hides any installed"
                 " pysockkit. Build the extension in place with `pip install -e .` (or"
                 " `python setup.py build_ext --inplace`), or run Python from another directory.")
    else:
        _msg += ". The installation is incomplete: reinstall pysockkit with this Python."
    raise ImportError(_msg, name=__name__) from None

TYPE_CHECKING = False  # not from typing: import pysockkit does not load it

from ._version import __version__
from ._errors import (
    ConnectionClosed,
    ConnectionReset,
    Error,
    FrameTooLarge,
    IncompleteFrame,
    OutOfStep,
    PeerDead,
    RemoteError,
    Timeout,
)
from ._types import Framing, Heartbeat, Keepalive, Message, RequestStats
from ._conn import Address, AddressLike, Connection, Listener, call, connect, listen
from ._enums import TcpState

if TYPE_CHECKING:  # what __getattr__ below loads on first use, for type checkers
    from ._reconnect import ConnectionEvent, Reconnect
    from ._redial import ReconnectingConnection
    from typing import Any

    from . import aio, lab, simplex, testing
    from ._capture import CaptureNotPermitted, Segment, TcpFlags, TcpOptions
    from ._diagram import StateDiagram, state_diagram
    from ._handler import ServerExits
    from ._observe import SocketEntry, SocketList, TcpInfo, find_socket, sockets, tcp_info
    from ._recording import Recording, StateChange, record
    from ._serve import serve
    from ._server import Server
    from ._watch import InfoSample, StateTrace, watch
    from .testing.proxy import (
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
        TimeoutFault,
    )

# Loaded on first use, so that `import pysockkit` stays cheap (no asyncio,
# no lab, no observation tables until a program asks for them): the name ->
# the module that defines it (a subpackage's name -> itself).
_LAZY = {
    "ConnectionEvent": "._reconnect",
    "Reconnect": "._reconnect",
    "ReconnectingConnection": "._redial",
    "aio": ".aio",
    "lab": ".lab",
    "simplex": ".simplex",
    "testing": ".testing",
    "ServerExits": "._handler",
    "Server": "._server",
    "serve": "._serve",
    "SocketEntry": "._observe",
    "SocketList": "._observe",
    "TcpInfo": "._observe",
    "find_socket": "._observe",
    "sockets": "._observe",
    "tcp_info": "._observe",
    "InfoSample": "._watch",
    "StateTrace": "._watch",
    "watch": "._watch",
    "StateDiagram": "._diagram",
    "state_diagram": "._diagram",
    "CaptureNotPermitted": "._capture",
    "Segment": "._capture",
    "TcpFlags": "._capture",
    "TcpOptions": "._capture",
    "record": "._recording",
    "Recording": "._recording",
    "StateChange": "._recording",
    **dict.fromkeys(
        ("Bandwidth", "FaultHandle", "FaultProxy", "Latency", "LimitData", "ProxiedConnection",
         "ProxyStats", "ResetPeer", "Slicer", "SlowClose", "Stall", "TimeoutFault"), ".testing.proxy"),
}


def __getattr__(name: str) -> "Any":
    """Load a public name (or subpackage) on first use; see _LAZY."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(where, __name__)
    value = module if where == "." + name else getattr(module, name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    # configuration
    "Framing",
    "Heartbeat",
    "Keepalive",
    "Reconnect",
    "Message",
    "RequestStats",
    # connections
    "Address",
    "AddressLike",
    "Connection",
    "Listener",
    "listen",
    "connect",
    "call",
    "ReconnectingConnection",
    "ConnectionEvent",
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
    # packets
    "record",
    "Recording",
    "Segment",
    "TcpFlags",
    "TcpOptions",
    "StateChange",
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
    "TimeoutFault",
    # errors
    "Error",
    "Timeout",
    "OutOfStep",
    "FrameTooLarge",
    "IncompleteFrame",
    "ConnectionClosed",
    "ConnectionReset",
    "PeerDead",
    "CaptureNotPermitted",
    "RemoteError",
]
