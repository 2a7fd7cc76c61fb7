"""TCP connection states, numbered as the Linux kernel numbers them.

The member names are the classic RFC 793 / textbook names; ``kernel_name``
gives Linux's own spelling (``include/net/tcp_states.h``) and ``ss_name``
what ``ss -tan`` prints.  ``CLOSED`` is Linux's ``TCP_CLOSE`` (7).
``NEW_SYN_RECV`` (12) is Linux's state for a request socket (a half-open
connection that has no socket of its own yet); note that sock_diag
reports such request sockets as ``SYN_RCVD`` (3) with inode 0.

Example::

    >>> from pysockkit import TcpState
    >>> TcpState(10)
    <TcpState.LISTEN: 10>
    >>> print(TcpState(10))
    LISTEN
    >>> TcpState.SYN_RCVD.kernel_name, TcpState.SYN_RCVD.ss_name
    ('SYN_RECV', 'SYN-RECV')
    >>> TcpState.TIME_WAIT.description
    'closed by us first; waiting 2*MSL so stray segments of this connection die out'
    >>> TcpState.from_name("estab") is TcpState.ESTABLISHED
    True
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable

__all__ = ["TcpState", "StateLike", "as_state", "as_states", "kernel_state"]


class TcpState(enum.IntEnum):
    """A TCP state, with Linux's numbering (``tcpi_state``, ``idiag_state``).

    Example::

        >>> import socket, pysockkit as sk
        >>> s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
        >>> sk.TcpState(sk.tcp_info(s).state) is sk.TcpState.LISTEN
        True
        >>> s.close()
    """

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RCVD = 3
    FIN_WAIT_1 = 4
    FIN_WAIT_2 = 5
    TIME_WAIT = 6
    CLOSED = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12

    def __str__(self) -> str:
        """The member name, as ``print(state)`` and ``f"{state}"`` show it
        (an IntEnum would print the number); ``repr`` keeps both.

        Example::

            >>> str(TcpState.ESTABLISHED), f"{TcpState.CLOSE_WAIT}"
            ('ESTABLISHED', 'CLOSE_WAIT')
        """
        return self.name

    def __format__(self, spec: str) -> str:
        """The name, padded or cut as for a str (``f"{s:>12}"``); a numeric
        format (``f"{s:d}"``, ``f"{s:02x}"``) formats the number.

        Example::

            >>> f"[{TcpState.LISTEN:<8}]", f"{TcpState.LISTEN:d}"
            ('[LISTEN  ]', '10')
        """
        if spec and spec[-1] in "bcdoxXneEfFgG%":
            return format(int(self), spec)
        return format(self.name, spec)

    @property
    def description(self) -> str:
        """One line saying what this state means.

        Example::

            >>> TcpState.CLOSE_WAIT.description
            'the peer closed its side (FIN received); waiting for us to close'
        """
        return _DESCRIPTIONS[self]

    @property
    def kernel_name(self) -> str:
        """Linux's name for the state (``"SYN_RECV"``, ``"CLOSE"``, ...).

        Example::

            >>> TcpState.FIN_WAIT_1.kernel_name
            'FIN_WAIT1'
        """
        return _KERNEL_NAMES[self]

    @property
    def ss_name(self) -> str:
        """The name ``ss -tan`` prints (``"ESTAB"``, ``"SYN-RECV"``, ...).

        Example::

            >>> TcpState.ESTABLISHED.ss_name
            'ESTAB'
        """
        return _SS_NAMES[self]

    @classmethod
    def from_name(cls, name: str) -> TcpState:
        """Look a state up by any of its names, case-insensitively: the
        member name (``"SYN_RCVD"``), the kernel name (``"SYN_RECV"``), the
        ``ss`` name (``"SYN-RECV"``), or ``"CLOSE"``/``"UNCONN"`` for CLOSED.

        Raises ``ValueError`` for an unknown name.

        Example::

            >>> TcpState.from_name("time-wait")
            <TcpState.TIME_WAIT: 6>
        """
        key = name.strip().upper().replace("-", "_")
        state = _BY_NAME.get(key)
        if state is None:
            raise ValueError(f"unknown TCP state name: {name!r}")
        return state


_DESCRIPTIONS = {
    TcpState.ESTABLISHED: "connection open; data flows both ways",
    TcpState.SYN_SENT: "our SYN is sent; waiting for the peer's SYN-ACK",
    TcpState.SYN_RCVD: "a SYN was received and SYN-ACK sent; waiting for the final ACK",
    TcpState.FIN_WAIT_1: "we closed (FIN sent); waiting for its ACK or the peer's FIN",
    TcpState.FIN_WAIT_2: "our FIN is acknowledged; waiting for the peer's FIN",
    TcpState.TIME_WAIT: (
        "closed by us first; waiting 2*MSL so stray segments of this connection die out"
    ),
    TcpState.CLOSED: "no connection (fresh, reset, timed out, or fully closed)",
    TcpState.CLOSE_WAIT: "the peer closed its side (FIN received); waiting for us to close",
    TcpState.LAST_ACK: "both sides closed, peer first; waiting for the ACK of our FIN",
    TcpState.LISTEN: "waiting for incoming connections",
    TcpState.CLOSING: "both sides sent FIN at once; waiting for the ACK of ours",
    TcpState.NEW_SYN_RECV: "Linux request socket: a half-open connection not yet accepted",
}

_KERNEL_NAMES = {
    TcpState.ESTABLISHED: "ESTABLISHED",
    TcpState.SYN_SENT: "SYN_SENT",
    TcpState.SYN_RCVD: "SYN_RECV",
    TcpState.FIN_WAIT_1: "FIN_WAIT1",
    TcpState.FIN_WAIT_2: "FIN_WAIT2",
    TcpState.TIME_WAIT: "TIME_WAIT",
    TcpState.CLOSED: "CLOSE",
    TcpState.CLOSE_WAIT: "CLOSE_WAIT",
    TcpState.LAST_ACK: "LAST_ACK",
    TcpState.LISTEN: "LISTEN",
    TcpState.CLOSING: "CLOSING",
    TcpState.NEW_SYN_RECV: "NEW_SYN_RECV",
}

# iproute2 misc/ss.c sstate_name[]; ss has no name of its own for 12.
_SS_NAMES = {
    TcpState.ESTABLISHED: "ESTAB",
    TcpState.SYN_SENT: "SYN-SENT",
    TcpState.SYN_RCVD: "SYN-RECV",
    TcpState.FIN_WAIT_1: "FIN-WAIT-1",
    TcpState.FIN_WAIT_2: "FIN-WAIT-2",
    TcpState.TIME_WAIT: "TIME-WAIT",
    TcpState.CLOSED: "UNCONN",
    TcpState.CLOSE_WAIT: "CLOSE-WAIT",
    TcpState.LAST_ACK: "LAST-ACK",
    TcpState.LISTEN: "LISTEN",
    TcpState.CLOSING: "CLOSING",
    TcpState.NEW_SYN_RECV: "NEW-SYN-RECV",
}

_BY_NAME: dict[str, TcpState] = {}
for _s in TcpState:
    for _n in (_s.name, _KERNEL_NAMES[_s], _SS_NAMES[_s]):
        _BY_NAME[_n.upper().replace("-", "_")] = _s
_BY_NAME["CLOSE"] = TcpState.CLOSED
_BY_NAME["SYN_RECEIVED"] = TcpState.SYN_RCVD
del _s, _n

StateLike = TcpState | int | str
"""What an argument that names a TCP state accepts: a :class:`TcpState`,
its number, or any of its names (see :meth:`TcpState.from_name`).

Example::

    sk.testing.assert_state(conn, "ESTABLISHED")    # or TcpState.ESTABLISHED, or 1
"""

# Linux's TCP_BOUND_INACTIVE: a state number that only sock_diag reports
# (and filters on), for a bound socket that is neither listening nor
# connected; every other view calls that socket CLOSE.
_BOUND_INACTIVE = 13


def kernel_state(value: int) -> TcpState:
    """The :class:`TcpState` of a state number the kernel reported
    (``tcpi_state``, ``idiag_state``); 13 (BOUND_INACTIVE, sock_diag's
    name for a bound, closed socket) is CLOSED.

    Example::

        >>> kernel_state(13), kernel_state(10)
        (<TcpState.CLOSED: 7>, <TcpState.LISTEN: 10>)
    """
    return TcpState.CLOSED if value == _BOUND_INACTIVE else TcpState(value)


def as_state(value: StateLike) -> TcpState:
    """The :class:`TcpState` a user named: a TcpState, a state number or a
    name.  TypeError for anything else (a bool too), ValueError for an
    unknown number or name.

    Example::

        >>> as_state("time-wait"), as_state(10)
        (<TcpState.TIME_WAIT: 6>, <TcpState.LISTEN: 10>)
    """
    if isinstance(value, TcpState):
        return value
    if isinstance(value, str):
        return TcpState.from_name(value)
    if not isinstance(value, bool):
        try:
            number = operator.index(value)  # an int, or an int-like (numpy)
        except TypeError:
            pass
        else:
            return TcpState(number)
    raise TypeError(f"a TCP state is a TcpState, a state number or a name, not {value!r}")


def as_states(value: StateLike | Iterable[StateLike], what: str = "state") -> set[TcpState]:
    """The set of states a user named: one state (see :func:`as_state`)
    or an iterable of them; ValueError (naming *what*) for an empty one.

    Example::

        >>> sorted(as_states(["LISTEN", 1]))
        [<TcpState.ESTABLISHED: 1>, <TcpState.LISTEN: 10>]
    """
    if isinstance(value, (TcpState, str, int)):
        return {as_state(value)}
    states = {as_state(s) for s in value}
    if not states:
        raise ValueError(f"{what}: no state given (an empty set of states)")
    return states
