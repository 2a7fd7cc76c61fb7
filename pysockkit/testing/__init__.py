"""Assertions for tests of networked code, usable with or without pytest.

- :func:`assert_state` polls a socket's TCP state (TCP_INFO while there is
  a descriptor, sock_diag after it is closed or for a bare address) until
  it is the expected one, and on failure lists every transition it saw.
- :func:`assert_frames` receives frames and checks that they are exactly
  the expected ones, in order, with nothing more behind them.

Both raise ``AssertionError`` with a readable message, so pytest shows
them like any failed ``assert``.  The fault proxy
(:class:`FaultProxy`, :mod:`.proxy`) is here too; the pytest plugin
(fixtures, leak checks) lives in ``pysockkit._pytest_plugin`` (its entry
point) and needs pytest; this package does not.

Example::

    >>> import socket, pysockkit as sk
    >>> from pysockkit.testing import assert_state, assert_frames
    >>> srv = sk.listen()
    >>> cli = sk.connect(srv.address, timeout=2.0)
    >>> peer = srv.accept(timeout=2.0)
    >>> cli.close()
    >>> assert_state(peer, "CLOSE_WAIT", within=1.0)
    <TcpState.CLOSE_WAIT: 8>
    >>> peer.close(); srv.close()
"""

from __future__ import annotations

from .._enums import StateLike
from .frames import assert_frames
from .proxy import (
    Bandwidth,
    Fault,
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
from .state import assert_state

__all__ = ["assert_state", "assert_frames", "StateLike", "FaultProxy", "Fault", "FaultHandle",
           "Bandwidth", "Latency", "LimitData", "ProxiedConnection", "ProxyStats", "ResetPeer",
           "Slicer", "SlowClose", "Stall"]
