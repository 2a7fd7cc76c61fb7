"""The recipe table of the state lab: how each TCP state is produced and
how it is seen (:func:`states`), and the error of a recipe that cannot run
here (:class:`LabUnavailable`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .._enums import StateLike, TcpState, as_state
from .._display import html_table as _html
from .._display import text_table as _table
from .._errors import Error

ObservedBy = Literal["TCP_INFO", "sock_diag"]

#: Every state the lab reproduces, in the order of a connection's life: the
#: eleven RFC 793 states, then Linux's request socket (NEW_SYN_RECV).
ALL_STATES: tuple[TcpState, ...] = (
    TcpState.LISTEN,
    TcpState.SYN_SENT,
    TcpState.SYN_RCVD,
    TcpState.ESTABLISHED,
    TcpState.FIN_WAIT_1,
    TcpState.FIN_WAIT_2,
    TcpState.CLOSE_WAIT,
    TcpState.CLOSING,
    TcpState.LAST_ACK,
    TcpState.TIME_WAIT,
    TcpState.CLOSED,
    TcpState.NEW_SYN_RECV,
)

# TCP_DEFER_ACCEPT of the SYN_RCVD recipe, in seconds.  The request socket
# lives about this long (rounded up to a SYN-ACK retransmit boundary:
# 600 reads back as 607); after that the connection is accepted.
_DEFER_ACCEPT_S = 600


class LabUnavailable(Error):
    """A recipe cannot run here, for a stated reason.

    Raised by :func:`reproduce` when the variant asked for needs something
    this machine or user does not offer: ``on_fd=True`` for SYN_RCVD needs
    ``unshare -Urn`` (util-linux, with unprivileged user namespaces
    enabled), and TIME_WAIT or NEW_SYN_RECV can never be held on a file
    descriptor.  A subclass of :class:`pysockkit.Error`.

    Example::

        >>> import pysockkit as sk
        >>> try:
        ...     sk.lab.reproduce(sk.TcpState.SYN_RCVD, on_fd=True,
        ...                      unshare="/nonexistent/unshare")
        ... except sk.lab.LabUnavailable as exc:
        ...     print("not here:", exc.strerror)  # doctest: +ELLIPSIS
        not here: SYN_RCVD on a file descriptor needs `unshare -Urn` ...
    """


# --------------------------------------------------------------------------
# The recipe table


@dataclass(frozen=True, slots=True)
class Recipe:
    """How the lab produces one state, and how it sees it.

    ``how`` is the recipe in one line; ``observed`` the state the kernel
    reports for it (``SYN_RCVD`` for ``NEW_SYN_RECV``); ``observed_by`` is
    ``"TCP_INFO"`` or ``"sock_diag"``; ``needs`` is ``"-"`` or what beyond
    plain socket calls it takes; ``lasts`` how long the kernel keeps the
    state while the scene is held; ``on_fd`` marks the variant that holds a
    SYN_RCVD socket on a file descriptor.

    Example::

        >>> import pysockkit as sk
        >>> r = sk.lab.states().get(sk.TcpState.FIN_WAIT_2)
        >>> r.observed_by, r.needs
        ('TCP_INFO', '-')
    """

    state: TcpState
    how: str
    observed: TcpState
    observed_by: ObservedBy
    needs: str
    lasts: str
    on_fd: bool = False


_NS = "unshare -Urn"

_RECIPES: tuple[Recipe, ...] = (
    Recipe(TcpState.LISTEN, "bind() + listen()",
           TcpState.LISTEN, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.SYN_SENT,
           "listen(0) and one connection fill the accept queue; the listener "
           "drops our SYN, connect() waits",
           TcpState.SYN_SENT, "TCP_INFO", "-",
           "133 s of SYN retransmits (tcp_syn_retries), then ETIMEDOUT"),
    Recipe(TcpState.SYN_RCVD,
           "TCP_DEFER_ACCEPT on the listener; the client connects and sends "
           "nothing, its bare ACK is dropped",
           TcpState.SYN_RCVD, "sock_diag", "-",
           f"about {_DEFER_ACCEPT_S} s (TCP_DEFER_ACCEPT), then accepted"),
    Recipe(TcpState.ESTABLISHED, "connect() + accept()",
           TcpState.ESTABLISHED, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.FIN_WAIT_1,
           "the peer never reads (4 KiB buffer); we fill its window, then "
           "shutdown(SHUT_WR): the FIN waits behind unsent data",
           TcpState.FIN_WAIT_1, "TCP_INFO", "-",
           "until closed (zero-window probes are ACKed)"),
    Recipe(TcpState.FIN_WAIT_2,
           "shutdown(SHUT_WR); the peer ACKs the FIN (one delayed-ACK tick) "
           "and never closes",
           TcpState.FIN_WAIT_2, "TCP_INFO", "-",
           "until closed (tcp_fin_timeout applies to orphans only)"),
    Recipe(TcpState.CLOSE_WAIT, "the peer does shutdown(SHUT_WR); we never close",
           TcpState.CLOSE_WAIT, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.CLOSING,
           "the FIN_WAIT_1 recipe, then the peer does shutdown(SHUT_WR): its "
           "FIN crosses ours, which is still unsent",
           TcpState.CLOSING, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.LAST_ACK,
           "the peer does shutdown(SHUT_WR) and never reads; we fill its "
           "window, then shutdown(SHUT_WR)",
           TcpState.LAST_ACK, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.TIME_WAIT,
           "we close() first, then the peer closes; the kernel keeps a "
           "timewait sock, no descriptor",
           TcpState.TIME_WAIT, "sock_diag", "-",
           "60 s (2*MSL, fixed), also after the scene"),
    Recipe(TcpState.CLOSED,
           "connect() + accept(), then the peer aborts (SO_LINGER 0): the RST "
           "closes our socket, we keep the fd",
           TcpState.CLOSED, "TCP_INFO", "-", "until closed"),
    Recipe(TcpState.NEW_SYN_RECV,
           "the SYN_RCVD recipe: a request socket, NEW_SYN_RECV (12) inside "
           "Linux, reported as SYN_RCVD (3)",
           TcpState.SYN_RCVD, "sock_diag", "-",
           f"about {_DEFER_ACCEPT_S} s (TCP_DEFER_ACCEPT), then accepted"),
    Recipe(TcpState.SYN_RCVD,
           "in a private netns: a socket connects to its own port "
           "(simultaneous open) and a filter drops its SYN-ACK",
           TcpState.SYN_RCVD, "TCP_INFO", _NS,
           "129 s of SYN-ACK retransmits, then ETIMEDOUT", on_fd=True),
)

_RECIPES_BY_KEY: dict[tuple[TcpState, bool], Recipe] = {
    (r.state, r.on_fd): r for r in _RECIPES}


class RecipeTable(list[Recipe]):
    """The list of :class:`Recipe`, printable as a table.

    Example::

        >>> import pysockkit as sk
        >>> table = sk.lab.states()
        >>> len(table), table[0].state.name
        (13, 'LISTEN')
        >>> table.get(sk.TcpState.SYN_RCVD, on_fd=True).needs
        'unshare -Urn'
    """

    __slots__ = ()

    def get(self, state: StateLike, on_fd: bool = False) -> Recipe:
        """The recipe for *state* (and the ``on_fd`` variant if asked).

        Raises ``KeyError`` if there is none.

        Example::

            >>> states().get("time-wait").observed_by
            'sock_diag'
        """
        st = as_state(state)
        for r in self:
            if r.state is st and r.on_fd == on_fd:
                return r
        raise KeyError(f"no recipe for {st.name} with on_fd={on_fd}")

    def _rows(self) -> list[tuple[str, ...]]:
        return [(r.state.name + (" (fd)" if r.on_fd else ""), r.observed.name,
                 r.observed_by, r.needs, r.how) for r in self]

    def __str__(self) -> str:
        return _table(("state", "observed", "by", "needs", "how"), self._rows())

    def _repr_html_(self) -> str:
        return _html(("state", "observed", "by", "needs", "how"), self._rows())


def states() -> RecipeTable:
    """The recipe of every state the lab reproduces, as a table.

    One row per state of :data:`ALL_STATES`, plus the ``on_fd`` variant of
    SYN_RCVD.  ``print()`` it for a text table; each row is a
    :class:`Recipe`.

    Example::

        >>> import pysockkit as sk
        >>> [r.state.name for r in sk.lab.states() if r.observed_by == "sock_diag"]
        ['SYN_RCVD', 'TIME_WAIT', 'NEW_SYN_RECV']
    """
    return RecipeTable(_RECIPES)
