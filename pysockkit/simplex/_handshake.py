"""The wire protocol of the simplex links (docs/PROTOCOL.md, "Simplex
links"): the id bits of replies, the HELLO and ACK frames of the link
handshake, their statuses, and the handshake's error."""

from __future__ import annotations

import logging
import struct
import time
from typing import Any, Optional

from .. import _wire
from .._conn import Address, Connection, connect
from .._errors import Error, Timeout
from .._types import Framing, Heartbeat

_log = logging.getLogger("pysockkit.simplex")
_log.addHandler(logging.NullHandler())  # a library: silent unless the program configures logging

REPLY: int = _wire.ID_REPLY
"""Id bit set on every reply frame (docs/PROTOCOL.md, "Simplex links"); the
C core's constant (``pysockkit._core.ID_REPLY``, read by ``pysockkit._wire``).
Example: a hand-written server answers ``conn.send(reply, id=rid | simplex.REPLY)``."""
ERROR: int = _wire.ID_ERROR
"""Id bit set, with REPLY, on a reply whose handler failed; the payload is
the error text.  Example: ``conn.send(b"ValueError: bad", id=rid | REPLY | ERROR)``."""
ID_MASK: int = _wire.ID_MASK
"""Request ids are 1 .. ID_MASK; ``reply_id & ID_MASK`` is the request's id.
Example: ``request_id = reply_id & simplex.ID_MASK``."""


# ------------------------------------------------------------ handshake
#
# HELLO (client -> server, first frame on each link, a plain frame):
#   "SKSX" | version 1 | role | flags | 0 | token (16 bytes)       24 bytes
# ACK (server -> client, first frame on each link, a plain frame):
#   "SKSX" | version 1 | status | flags | 0 | reason (UTF-8)      8+ bytes

_MAGIC = b"SKSX"
_VERSION = 1
_HELLO = struct.Struct("!4sBBBB16s")
_ACK = struct.Struct("!4sBBBB")
_ROLE_REPLY = 1
_ROLE_REQUEST = 2
_ROLE_NAME = {_ROLE_REPLY: "reply", _ROLE_REQUEST: "request"}
_FLAG_HEARTBEAT = 0x01
_ST_OK = 0
_ST_BAD_HELLO = 1
_ST_UNKNOWN_SESSION = 2
_ST_BUSY = 3
_ST_DUPLICATE = 4
_ST_HEARTBEAT = 5
_ST_WRONG_LINK = 6
_STATUS_NAME = {
    _ST_OK: "ok",
    _ST_BAD_HELLO: "malformed registration",
    _ST_UNKNOWN_SESSION: "unknown session",
    _ST_BUSY: "server busy",
    _ST_DUPLICATE: "duplicate session token",
    _ST_HEARTBEAT: "heartbeat setting differs",
    _ST_WRONG_LINK: "wrong link",
}

_CORRELATED = Framing(correlation=True)


def _check_framing(framing: Optional[Framing]) -> Framing:
    if framing is None:
        return _CORRELATED
    if not framing.correlation:
        raise ValueError(
            "simplex links need correlation ids: pass sk.Framing(correlation=True, ...) "
            "(the same on client and server)"
        )
    return framing


def _hello(role: int, token: bytes, heartbeat: bool) -> bytes:
    return _HELLO.pack(_MAGIC, _VERSION, role, _FLAG_HEARTBEAT if heartbeat else 0, 0, token)


def _ack(status: int, heartbeat: bool, reason: str = "") -> bytes:
    flags = _FLAG_HEARTBEAT if heartbeat else 0
    return _ACK.pack(_MAGIC, _VERSION, status, flags, 0) + reason.encode()[:512]


# RemoteError (the server's handler raised) is sk.RemoteError, the same
# class for every client that matches replies by id; imported above and
# exported here as simplex.RemoteError.


class HandshakeError(Error):
    """The server refused or broke the link handshake (wrong port, busy,
    heartbeat setting or framing that differs).  ``exc.status`` is the
    status code of the server's acknowledgement (docs/PROTOCOL.md), or -1
    when no valid acknowledgement came.

    Example::

        try:
            simplex.Client(req_addr, reply_addr, connect_timeout=2.0)
        except simplex.HandshakeError as exc:
            print("refused:", exc, exc.status)
    """

    status: int = -1


def _handshake_error(msg: str, status: int = -1) -> HandshakeError:
    exc = HandshakeError(msg)
    exc.status = status
    return exc


def open_link(addr: Address, role: int, name: str, token: bytes, framing: Framing,
              heartbeat: Optional[Heartbeat], deadline: Optional[float]) -> Connection:
    """Connect one link (*role*, called *name* in errors) and run the
    client's half of its handshake, by *deadline* (time.monotonic()).

    Example::

        conn = open_link(addr, _ROLE_REPLY, "simplex reply link", token,
                         framing, None, time.monotonic() + 5.0)
    """

    def left() -> Optional[float]:
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    hb = heartbeat is not None
    try:
        conn = connect(addr, timeout=left(), framing=framing, heartbeat=heartbeat)
    except OSError as exc:
        note = getattr(exc, "add_note", None)  # Python 3.11+
        if note is not None:
            note(f"while connecting the {name}")
        raise
    try:
        conn.send(_hello(role, token, hb), timeout=left())
        if role == _ROLE_REPLY and not hb:
            conn.shutdown("write", timeout=left())  # the reply link is server -> client
        try:
            ack: Any = conn.recv(timeout=left())
        except Timeout as exc:
            raise _handshake_error(
                f"{name}: no acknowledgement from the server within the connect "
                "timeout (is it a simplex.Server, with the same Framing?)"
            ) from exc
        except Error as exc:
            raise _handshake_error(
                f"{name}: the server closed the link during the handshake ({exc}); "
                "check the address, the port order (request, reply) and that both "
                "sides use the same Framing and heartbeat setting"
            ) from exc
        if not isinstance(ack, bytes) or len(ack) < _ACK.size or ack[:4] != _MAGIC:
            raise _handshake_error(f"{name}: the peer is not a pysockkit simplex server")
        _m, version, status, flags, _r = _ACK.unpack_from(ack)
        if status != _ST_OK:
            reason = ack[_ACK.size:].decode(errors="replace")
            raise _handshake_error(
                f"{name}: refused by the server: {_STATUS_NAME.get(status, status)}"
                + (f" ({reason})" if reason else ""),
                status,
            )
        if bool(flags & _FLAG_HEARTBEAT) != hb:
            raise _handshake_error(f"{name}: the server's heartbeat setting differs")
        if role == _ROLE_REQUEST and not hb:
            conn.shutdown("read")  # local only: the server already sent FIN
    except BaseException:
        conn.close()
        raise
    return conn
