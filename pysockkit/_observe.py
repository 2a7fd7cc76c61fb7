"""Live TCP observation: TCP_INFO of one socket, sock_diag of all of them.

Two views of the kernel's TCP state:

- :func:`tcp_info` reads ``getsockopt(TCP_INFO)`` of a socket you hold (a
  stdlib socket, anything with ``fileno()``, or a file descriptor) into a
  :class:`TcpInfo`.  Every field has its unit in its name (``rtt_us``,
  ``last_data_sent_ms``, ``pacing_rate_Bps``); a field the running kernel
  did not return is ``None``, never a made-up zero.
- :func:`sockets` asks the kernel (NETLINK_SOCK_DIAG) for every TCP socket
  of this network namespace, including those nobody holds a descriptor to:
  TIME_WAIT sockets, request sockets (half-open connections, reported as
  SYN_RCVD with inode 0) and orphans.  Port filters run in the kernel, so
  this stays fast even with 100k TIME_WAIT sockets around.  No privileges
  are needed.

Example::

    >>> import socket, pysockkit as sk
    >>> srv = socket.create_server(("127.0.0.1", 0))
    >>> port = srv.getsockname()[1]
    >>> cli = socket.create_connection(("127.0.0.1", port))
    >>> sk.tcp_info(cli).state
    <TcpState.ESTABLISHED: 1>
    >>> [e.state.name for e in sk.sockets(port=port)]  # doctest: +SKIP
    ['LISTEN', 'ESTABLISHED', 'ESTABLISHED']
    >>> print(sk.sockets(port=port))  # doctest: +SKIP
    State      Recv-Q Send-Q     Local Address:Port      Peer Address:Port
    LISTEN     0      128           127.0.0.1:41555              0.0.0.0:*
    ESTAB      0      0             127.0.0.1:41555        127.0.0.1:52114
    ESTAB      0      0             127.0.0.1:52114        127.0.0.1:41555
    >>> cli.close(); srv.close()
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union

from . import _core
from ._display import Markup, Section, html_table
from ._enums import StateLike, TcpState, as_states, kernel_state
from ._net import format_address, parse_family

__all__ = [
    "TcpInfo",
    "SocketEntry",
    "SocketList",
    "tcp_info",
    "sockets",
    "find_socket",
]

# --------------------------------------------------------------------------
# TcpInfo

# (python field, kernel key from _core.tcp_info, group, unit shown in HTML)
# Kernel units: times in us unless the name says ms; rates in bytes/s;
# *_segs count segments (packets).
_INFO_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("state", "state", "State", ""),
    ("ca_state", "ca_state", "State", ""),
    ("options", "options", "State", "flags"),
    ("snd_wscale", "snd_wscale", "State", "shift"),
    ("rcv_wscale", "rcv_wscale", "State", "shift"),
    ("delivery_rate_app_limited", "delivery_rate_app_limited", "State", ""),
    ("fastopen_client_fail", "fastopen_client_fail", "State", ""),
    ("retransmits", "retransmits", "State", "count"),
    ("probes", "probes", "State", "count"),
    ("backoff", "backoff", "State", "count"),
    ("rto_us", "rto", "Timers & RTT", "µs"),
    ("ato_us", "ato", "Timers & RTT", "µs"),
    ("snd_mss_bytes", "snd_mss", "Window & congestion", "bytes"),
    ("rcv_mss_bytes", "rcv_mss", "Window & congestion", "bytes"),
    ("unacked_segs", "unacked", "In flight", "segments"),
    ("sacked_segs", "sacked", "In flight", "segments"),
    ("lost_segs", "lost", "In flight", "segments"),
    ("retrans_segs", "retrans", "In flight", "segments"),
    ("fackets_segs", "fackets", "In flight", "segments"),
    ("last_data_sent_ms", "last_data_sent", "Timers & RTT", "ms ago"),
    ("last_ack_sent_ms", "last_ack_sent", "Timers & RTT", "ms ago"),
    ("last_data_recv_ms", "last_data_recv", "Timers & RTT", "ms ago"),
    ("last_ack_recv_ms", "last_ack_recv", "Timers & RTT", "ms ago"),
    ("pmtu_bytes", "pmtu", "Window & congestion", "bytes"),
    ("rcv_ssthresh_bytes", "rcv_ssthresh", "Window & congestion", "bytes"),
    ("rtt_us", "rtt", "Timers & RTT", "µs"),
    ("rttvar_us", "rttvar", "Timers & RTT", "µs"),
    ("snd_ssthresh_segs", "snd_ssthresh", "Window & congestion", "segments"),
    ("snd_cwnd_segs", "snd_cwnd", "Window & congestion", "segments"),
    ("advmss_bytes", "advmss", "Window & congestion", "bytes"),
    ("reordering_segs", "reordering", "Window & congestion", "segments"),
    ("rcv_rtt_us", "rcv_rtt", "Timers & RTT", "µs"),
    ("rcv_space_bytes", "rcv_space", "Window & congestion", "bytes"),
    ("total_retrans_segs", "total_retrans", "Totals", "segments"),
    ("pacing_rate_Bps", "pacing_rate", "Rates", "bytes/s"),
    ("max_pacing_rate_Bps", "max_pacing_rate", "Rates", "bytes/s"),
    ("bytes_acked", "bytes_acked", "Totals", "bytes"),
    ("bytes_received", "bytes_received", "Totals", "bytes"),
    ("segs_out", "segs_out", "Totals", "segments"),
    ("segs_in", "segs_in", "Totals", "segments"),
    ("notsent_bytes", "notsent_bytes", "In flight", "bytes"),
    ("min_rtt_us", "min_rtt", "Timers & RTT", "µs"),
    ("data_segs_in", "data_segs_in", "Totals", "segments"),
    ("data_segs_out", "data_segs_out", "Totals", "segments"),
    ("delivery_rate_Bps", "delivery_rate", "Rates", "bytes/s"),
    ("busy_time_us", "busy_time", "Timers & RTT", "µs"),
    ("rwnd_limited_us", "rwnd_limited", "Timers & RTT", "µs"),
    ("sndbuf_limited_us", "sndbuf_limited", "Timers & RTT", "µs"),
    ("delivered_segs", "delivered", "Totals", "segments"),
    ("delivered_ce_segs", "delivered_ce", "ECN", "segments"),
    ("bytes_sent", "bytes_sent", "Totals", "bytes"),
    ("bytes_retrans", "bytes_retrans", "Totals", "bytes"),
    ("dsack_dups", "dsack_dups", "Totals", "count"),
    ("reord_seen", "reord_seen", "Totals", "count"),
    ("rcv_ooopack_segs", "rcv_ooopack", "Totals", "segments"),
    ("snd_wnd_bytes", "snd_wnd", "Window & congestion", "bytes"),
    ("rcv_wnd_bytes", "rcv_wnd", "Window & congestion", "bytes"),
    ("rehash", "rehash", "Totals", "count"),
    ("total_rto", "total_rto", "Totals", "count"),
    ("total_rto_recoveries", "total_rto_recoveries", "Totals", "count"),
    ("total_rto_time_ms", "total_rto_time", "Timers & RTT", "ms"),
    ("received_ce_segs", "received_ce", "ECN", "segments"),
    ("delivered_e1_bytes", "delivered_e1_bytes", "ECN", "bytes"),
    ("delivered_e0_bytes", "delivered_e0_bytes", "ECN", "bytes"),
    ("delivered_ce_bytes", "delivered_ce_bytes", "ECN", "bytes"),
    ("received_e1_bytes", "received_e1_bytes", "ECN", "bytes"),
    ("received_e0_bytes", "received_e0_bytes", "ECN", "bytes"),
    ("received_ce_bytes", "received_ce_bytes", "ECN", "bytes"),
    ("accecn_fail_mode", "accecn_fail_mode", "ECN", "flags"),
    ("accecn_opt_seen", "accecn_opt_seen", "ECN", ""),
    ("ecn_mode", "ecn_mode", "ECN", ""),  # Linux >= 7.0
    ("options2", "options2", "ECN", "flags"),  # Linux >= 7.0
)
_KERNEL_TO_FIELD = {k: f for f, k, _, _ in _INFO_FIELDS}
_GROUPS = ("State", "Timers & RTT", "Window & congestion", "In flight",
           "Totals", "Rates", "ECN")

_CA_STATES = {0: "Open", 1: "Disorder", 2: "CWR", 3: "Recovery", 4: "Loss"}
_OPTION_BITS = (
    (1, "timestamps"), (2, "sack"), (4, "wscale"), (8, "ecn"),
    (16, "ecn_seen"), (32, "syn_data"), (64, "usec_ts"), (128, "tfo_child"),
)


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """The kernel's ``struct tcp_info`` for one socket, units in the names.

    Every field is ``None`` when the running kernel did not return it
    (older kernels return a shorter struct; ``kernel_len`` says how many
    bytes came back).  Suffixes: ``_us`` microseconds, ``_ms``
    milliseconds (``last_*_ms`` are "how long ago"), ``_Bps`` bytes per
    second, ``_bytes``/``bytes_*`` bytes, ``_segs`` segments; plain names
    are counts or flags.  ``ecn_mode`` and ``options2`` exist from Linux 7.0
    (which re-reads the last 4 bytes of 6.18's struct).

    Example::

        >>> import socket, pysockkit as sk
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> cli = socket.create_connection(srv.getsockname())
        >>> info = sk.tcp_info(cli)
        >>> info.state, info.rtt_us > 0, info.snd_mss_bytes > 0
        (<TcpState.ESTABLISHED: 1>, True, True)
        >>> info.as_dict()["rtt_us"] == info.rtt_us
        True
        >>> cli.close(); srv.close()
    """

    state: Optional[TcpState] = None
    ca_state: Optional[int] = None
    options: Optional[int] = None
    snd_wscale: Optional[int] = None
    rcv_wscale: Optional[int] = None
    delivery_rate_app_limited: Optional[bool] = None
    fastopen_client_fail: Optional[int] = None
    retransmits: Optional[int] = None
    probes: Optional[int] = None
    backoff: Optional[int] = None
    rto_us: Optional[int] = None
    ato_us: Optional[int] = None
    snd_mss_bytes: Optional[int] = None
    rcv_mss_bytes: Optional[int] = None
    unacked_segs: Optional[int] = None
    sacked_segs: Optional[int] = None
    lost_segs: Optional[int] = None
    retrans_segs: Optional[int] = None
    fackets_segs: Optional[int] = None
    last_data_sent_ms: Optional[int] = None
    last_ack_sent_ms: Optional[int] = None
    last_data_recv_ms: Optional[int] = None
    last_ack_recv_ms: Optional[int] = None
    pmtu_bytes: Optional[int] = None
    rcv_ssthresh_bytes: Optional[int] = None
    rtt_us: Optional[int] = None
    rttvar_us: Optional[int] = None
    snd_ssthresh_segs: Optional[int] = None
    snd_cwnd_segs: Optional[int] = None
    advmss_bytes: Optional[int] = None
    reordering_segs: Optional[int] = None
    rcv_rtt_us: Optional[int] = None
    rcv_space_bytes: Optional[int] = None
    total_retrans_segs: Optional[int] = None
    pacing_rate_Bps: Optional[int] = None
    max_pacing_rate_Bps: Optional[int] = None
    bytes_acked: Optional[int] = None
    bytes_received: Optional[int] = None
    segs_out: Optional[int] = None
    segs_in: Optional[int] = None
    notsent_bytes: Optional[int] = None
    min_rtt_us: Optional[int] = None
    data_segs_in: Optional[int] = None
    data_segs_out: Optional[int] = None
    delivery_rate_Bps: Optional[int] = None
    busy_time_us: Optional[int] = None
    rwnd_limited_us: Optional[int] = None
    sndbuf_limited_us: Optional[int] = None
    delivered_segs: Optional[int] = None
    delivered_ce_segs: Optional[int] = None
    bytes_sent: Optional[int] = None
    bytes_retrans: Optional[int] = None
    dsack_dups: Optional[int] = None
    reord_seen: Optional[int] = None
    rcv_ooopack_segs: Optional[int] = None
    snd_wnd_bytes: Optional[int] = None
    rcv_wnd_bytes: Optional[int] = None
    rehash: Optional[int] = None
    total_rto: Optional[int] = None
    total_rto_recoveries: Optional[int] = None
    total_rto_time_ms: Optional[int] = None
    received_ce_segs: Optional[int] = None
    delivered_e1_bytes: Optional[int] = None
    delivered_e0_bytes: Optional[int] = None
    delivered_ce_bytes: Optional[int] = None
    received_e1_bytes: Optional[int] = None
    received_e0_bytes: Optional[int] = None
    received_ce_bytes: Optional[int] = None
    accecn_fail_mode: Optional[int] = None
    accecn_opt_seen: Optional[int] = None
    ecn_mode: Optional[int] = None
    options2: Optional[int] = None
    kernel_len: int = 0

    @classmethod
    def _from_core(cls, raw: dict[str, int]) -> TcpInfo:
        """Build from the dict ``_core.tcp_info`` returns (kernel names,
        present fields only, plus ``"_len"``)."""
        kw: dict[str, Any] = {"kernel_len": raw.get("_len", 0)}
        for key, value in raw.items():
            name = _KERNEL_TO_FIELD.get(key)
            if name is None:
                continue
            if name == "state":
                kw[name] = kernel_state(value)
            elif name == "delivery_rate_app_limited":
                kw[name] = bool(value)
            else:
                kw[name] = value
        return cls(**kw)

    @property
    def ca_state_name(self) -> Optional[str]:
        """Congestion-avoidance state by name: ``"Open"``, ``"Disorder"``,
        ``"CWR"``, ``"Recovery"``, ``"Loss"`` (``None`` if absent).

        Example::

            >>> TcpInfo(ca_state=0).ca_state_name
            'Open'
        """
        if self.ca_state is None:
            return None
        return _CA_STATES.get(self.ca_state, str(self.ca_state))

    @property
    def option_names(self) -> tuple[str, ...]:
        """The negotiated options (``tcpi_options``) by name.

        Example::

            >>> TcpInfo(options=7).option_names
            ('timestamps', 'sack', 'wscale')
        """
        if self.options is None:
            return ()
        return tuple(n for bit, n in _OPTION_BITS if self.options & bit)

    def as_dict(self, include_absent: bool = False) -> dict[str, Any]:
        """The fields as a dict (units in the keys).  Fields the kernel did
        not return are left out unless ``include_absent`` is true (then they
        map to ``None``).  ``kernel_len`` is always included.

        Example::

            >>> TcpInfo(rtt_us=42, kernel_len=280).as_dict()
            {'rtt_us': 42, 'kernel_len': 280}
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None or include_absent:
                out[f.name] = v
        return out

    def _repr_html_(self) -> str:
        """A table grouped by topic, with units (for Jupyter)."""
        rows: list[Union[Section, tuple[object, ...]]] = []
        for group in _GROUPS:
            cells = [(Markup(f"<code>{name}</code>"), _fmt_html_value(self, name, v), unit)
                     for name, _key, g, unit in _INFO_FIELDS
                     if g == group and (v := getattr(self, name)) is not None]
            if cells:
                rows.append(Section(group))
                rows.extend(cells)
        head = (f"<b>TcpInfo</b> ({self.kernel_len} bytes from the kernel)")
        return f"<div>{head}{html_table(('field', 'value', 'unit'), rows, _RIGHT_1)}</div>"


_RIGHT_1 = frozenset({1})


def _fmt_html_value(info: TcpInfo, name: str, v: Any) -> str:
    """A TcpInfo value as its HTML table shows it (text: the table escapes it)."""
    if name == "state" and isinstance(v, TcpState):
        return f"{v.name} ({int(v)})"
    if name == "ca_state":
        return f"{info.ca_state_name} ({v})"
    if name == "options":
        return ", ".join(info.option_names) or "0"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def fd_state(fd: int) -> TcpState:
    """The TCP state of the socket on descriptor *fd* (one TCP_INFO
    syscall, read by the C core; CLOSED for a socket that is not connected).

    Example::

        >>> s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
        >>> fd_state(s.fileno())
        <TcpState.LISTEN: 10>
        >>> s.close()
    """
    return kernel_state(_core.tcp_state(fd))


def tcp_info(sock_or_fd: Any) -> TcpInfo:
    """``getsockopt(TCP_INFO)`` of a TCP socket as a :class:`TcpInfo`.

    *sock_or_fd* is a stdlib :class:`socket.socket`, anything with a
    ``fileno()`` method (a pysockkit Connection, an asyncio transport's
    socket), or an int file descriptor.  Costs one syscall; the GIL is
    released around it.  Raises ``pysockkit.Error`` (an ``OSError``) if
    the descriptor is not a TCP socket.

    Example::

        >>> import socket, pysockkit as sk
        >>> s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
        >>> info = sk.tcp_info(s)
        >>> info.state, info.kernel_len >= 104
        (<TcpState.LISTEN: 10>, True)
        >>> sk.tcp_info(s.fileno()).state is sk.TcpState.LISTEN
        True
        >>> s.close()
    """
    return TcpInfo._from_core(_core.tcp_info(sock_or_fd))


# --------------------------------------------------------------------------
# SocketEntry / SocketList

_TIMER_NAMES = {0: "none", 1: "retransmit", 2: "keepalive", 3: "time_wait",
                4: "probe"}


@dataclass(frozen=True, slots=True)
class SocketEntry:
    """One TCP socket as sock_diag reports it.

    ``local`` and ``remote`` are ``(host, port)``; an unconnected side is
    ``("0.0.0.0", 0)`` or ``("::", 0)``.  ``inode`` is 0 for sockets no
    process holds (TIME_WAIT, request sockets).  ``timer`` is ``"none"``,
    ``"retransmit"``, ``"keepalive"``, ``"time_wait"`` or ``"probe"``
    (zero-window probe), firing in ``expires_s`` seconds after
    ``retrans`` retransmits/probes so far.  For a LISTEN socket ``recv_q``
    is the accept queue length and ``send_q`` the backlog; otherwise they
    are bytes not yet read by the application and bytes not yet
    acknowledged.  ``info`` is a :class:`TcpInfo` when asked for
    (``sockets(info=True)``) and the kernel has one (not for TIME_WAIT or
    request sockets).

    Example::

        >>> import socket, pysockkit as sk
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> [e] = sk.sockets(state="LISTEN", local_port=srv.getsockname()[1])
        >>> e.state, e.local == srv.getsockname(), e.inode > 0
        (<TcpState.LISTEN: 10>, True, True)
        >>> srv.close()
    """

    family: socket.AddressFamily
    state: TcpState
    local: tuple[str, int]
    remote: tuple[str, int]
    inode: int
    uid: int
    timer: str
    expires_s: float
    retrans: int
    recv_q: int
    send_q: int
    cookie: int
    ifindex: int = 0
    info: Optional[TcpInfo] = None

    @classmethod
    def _from_core(cls, t: tuple[Any, ...]) -> SocketEntry:
        # The hot loop of sockets(): thousands of entries per listing.  The
        # frozen dataclass's keyword __init__ and Enum lookups dominated, so
        # the slots are filled directly (same values, same invariants).
        (family, state, src, sport, dst, dport, inode, uid, timer, expires_ms,
         retrans, rqueue, wqueue, cookie, ifindex, info) = t
        e = _new_entry(cls)
        for setter, value in zip(_ENTRY_SETTERS, (
                _FAMILIES.get(family) or socket.AddressFamily(family),
                _STATES.get(state) or kernel_state(state),
                (src, sport), (dst, dport), inode, uid,
                _TIMER_NAMES.get(timer) or f"unknown({timer})",
                expires_ms / 1000.0, retrans, rqueue, wqueue, cookie, ifindex,
                None if info is None else TcpInfo._from_core(info))):
            setter(e, value)
        return e

    @property
    def is_request(self) -> bool:
        """True for a request socket: a half-open connection the kernel
        keeps without a socket of its own (SYN_RCVD with inode 0).

        Example::

            >>> e = SocketEntry(socket.AF_INET, TcpState.SYN_RCVD,
            ...                 ("127.0.0.1", 80), ("127.0.0.1", 5555), 0, 0,
            ...                 "retransmit", 1.0, 0, 0, 0, 1)
            >>> e.is_request
            True
        """
        return self.state is TcpState.SYN_RCVD and self.inode == 0

    def __str__(self) -> str:
        return _ss_line(self)

    def _repr_html_(self) -> str:
        """A one-row table in the ``ss`` layout (for Jupyter)."""
        return _html_table([self])


def _ss_addr(family: int, host: str, port: int) -> str:
    """As ``ss`` prints it: port 0 is ``*`` (an AF_INET6 host always has a
    colon, so format_address brackets it)."""
    return format_address((host, "*" if port == 0 else port))


_SS_HEADER = (
    f"{'State':<11}{'Recv-Q':<7}{'Send-Q':<7}"
    f"{'Local Address:Port':>22} {'Peer Address:Port':>22}"
)


def _ss_line(e: SocketEntry) -> str:
    local = _ss_addr(e.family, *e.local)
    remote = _ss_addr(e.family, *e.remote)
    return (f"{e.state.ss_name:<11}{e.recv_q:<7}{e.send_q:<7}"
            f"{local:>22} {remote:>22}")


_HTML_COLS = ("state", "recv_q", "send_q", "local", "remote", "timer",
              "inode", "uid")


def _html_table(entries: list[SocketEntry]) -> str:
    with_rtt = any(e.info is not None for e in entries)
    cols = list(_HTML_COLS) + (["rtt_us", "cwnd_segs"] if with_rtt else [])
    rows: list[list[object]] = []
    for e in entries:
        timer = e.timer if e.timer == "none" else f"{e.timer} ({e.expires_s:.1f} s)"
        vals: list[object] = [
            Markup(f"<span title='{html.escape(e.state.description)}'>"
                   f"{html.escape(e.state.name)}{' (request)' if e.is_request else ''}"
                   f"</span>"),
            e.recv_q, e.send_q, _ss_addr(e.family, *e.local), _ss_addr(e.family, *e.remote),
            timer, e.inode, e.uid,
        ]
        if with_rtt:
            rtt = e.info.rtt_us if e.info is not None else None
            cwnd = e.info.snd_cwnd_segs if e.info is not None else None
            vals += ["" if rtt is None else rtt, "" if cwnd is None else cwnd]
        rows.append(vals)
    return html_table(cols, rows)


_new_entry = object.__new__
_ENTRY_SETTERS = tuple(
    SocketEntry.__dict__[f.name].__set__ for f in dataclasses.fields(SocketEntry)
)
_FAMILIES = {int(f): f for f in (socket.AF_INET, socket.AF_INET6)}
_STATES = {int(st): st for st in TcpState}
# sockets() gets its entries built by the C dump, straight into the slots
_core.diag_set_entry_type(
    SocketEntry,
    tuple(f.name for f in dataclasses.fields(SocketEntry)),
    tuple([None] + [kernel_state(i) for i in range(1, 14)]),
    _FAMILIES,
    tuple(_TIMER_NAMES[i] for i in range(len(_TIMER_NAMES))),
)


class SocketList(list[SocketEntry]):
    """A list of :class:`SocketEntry` that prints like ``ss -tan``.

    Example::

        >>> import socket, pysockkit as sk
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> found = sk.sockets(state="LISTEN", local_port=srv.getsockname()[1])
        >>> print(found)  # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
        State      Recv-Q Send-Q   Local Address:Port    Peer Address:Port
        LISTEN     0      ...  127.0.0.1:... 0.0.0.0:*
        >>> found.count_by_state()
        {<TcpState.LISTEN: 10>: 1}
        >>> srv.close()
    """

    __slots__ = ()

    def __str__(self) -> str:
        return "\n".join([_SS_HEADER] + [_ss_line(e) for e in self])

    def count_by_state(self) -> dict[TcpState, int]:
        """How many entries are in each state, in state order.

        Example::

            >>> SocketList().count_by_state()
            {}
        """
        counts: dict[TcpState, int] = {}
        for e in self:
            counts[e.state] = counts.get(e.state, 0) + 1
        return dict(sorted(counts.items()))

    def _repr_html_(self) -> str:
        """A table in the ``ss`` layout (for Jupyter)."""
        return (f"<div><b>{len(self)} TCP socket{'s' if len(self) != 1 else ''}"
                f"</b>{_html_table(list(self))}</div>")


# --------------------------------------------------------------------------
# sockets() / find_socket()

StateSpec = Union[StateLike, Iterable[StateLike], None]


def _state_mask(state: StateSpec) -> tuple[int, bool]:
    """(idiag_states bitmask, bound_inactive) for a state filter."""
    if state is None:
        return int(_core.DIAG_ALL_STATES), False
    states = as_states(state)
    mask = 0
    for s in states:
        mask |= 1 << int(s)
        if s in (TcpState.SYN_RCVD, TcpState.NEW_SYN_RECV):
            # request sockets are reported as 3 and matched by 3 or 12
            mask |= (1 << 3) | (1 << 12)
    return mask, TcpState.CLOSED in states


def _family(family: Any) -> int:
    return 0 if family is None else int(parse_family(family))


def _addr(a: Any) -> Optional[str]:
    """Validate and normalize a numeric address (text or ipaddress object)."""
    if a is None:
        return None
    return str(ipaddress.ip_address(str(a).strip("[]")))


def _port(p: Optional[int], what: str) -> int:
    if p is None:
        return -1
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
        raise ValueError(f"{what} must be an int in 0..65535, not {p!r}")
    return p


def sockets(
    state: StateSpec = None,
    port: Optional[int] = None,
    local_port: Optional[int] = None,
    remote_port: Optional[int] = None,
    address: Any = None,
    family: Any = None,
    info: bool = False,
    *,
    local_address: Any = None,
    remote_address: Any = None,
    limit: Optional[int] = None,
) -> SocketList:
    """TCP sockets of this network namespace, from the kernel (sock_diag).

    Sees what no descriptor can: TIME_WAIT sockets, request sockets
    (half-open connections, reported as ``SYN_RCVD`` with ``inode == 0``),
    orphans, other users' sockets.  Needs no privileges.  Filters combine
    with AND:

    - ``state``: a :class:`TcpState`, a state number, a name (``"LISTEN"``,
      ``"time-wait"``, ``"ESTAB"``), or an iterable of them; ``None`` means
      all states.  ``CLOSED`` also asks for bound, never-connected sockets
      (Linux >= 6.8).  ``SYN_RCVD`` and ``NEW_SYN_RECV`` both match request
      sockets.
    - ``port`` (either side), ``local_port``, ``remote_port``: run by the
      kernel, so cheap even with 100k TIME_WAIT sockets around.
    - ``address`` (either side), ``local_address``, ``remote_address``:
      numeric IPv4/IPv6 text or ``ipaddress`` objects; an IPv4-mapped IPv6
      address matches the IPv4 one.
    - ``family``: ``socket.AF_INET``/``AF_INET6`` (or ``4``/``6``,
      ``"ipv4"``/``"ipv6"``); ``None`` for both.
    - ``info``: also fetch each socket's :class:`TcpInfo` (``entry.info``).
    - ``limit``: stop after that many entries.

    Example::

        >>> import socket, pysockkit as sk
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> port = srv.getsockname()[1]
        >>> cli = socket.create_connection(("127.0.0.1", port))
        >>> conn, _ = srv.accept()
        >>> here = cli.getsockname()
        >>> cli.close(); conn.close()   # we closed first: TIME_WAIT is ours
        >>> tw = sk.sockets(state="TIME_WAIT", local_port=here[1], remote_port=port)
        >>> [(e.state.name, e.local == here, e.timer) for e in tw]
        [('TIME_WAIT', True, 'time_wait')]
        >>> sk.sockets(state=sk.TcpState.LISTEN, port=port)[0].local[1] == port
        True
        >>> srv.close()
    """
    mask, bound_inactive = _state_mask(state)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0, not {limit!r}")
    rows = _core.diag_dump(
        states=mask,
        family=_family(family),
        sport=_port(local_port, "local_port"),
        dport=_port(remote_port, "remote_port"),
        port=_port(port, "port"),
        src=_addr(local_address),
        dst=_addr(remote_address),
        addr=_addr(address),
        with_info=bool(info),
        bound_inactive=bound_inactive,
        limit=limit or 0,
        build=True,
    )
    out = SocketList(rows)  # SocketEntry objects, filled in C
    if info:
        for e in out:
            if e.info is not None:
                object.__setattr__(e, "info", TcpInfo._from_core(e.info))  # type: ignore[arg-type]
    return out


def find_socket(
    local: tuple[Any, int],
    remote: tuple[Any, int],
    *,
    cookie: Optional[int] = None,
    info: bool = False,
) -> Optional[SocketEntry]:
    """Exact lookup of one TCP socket by its 4-tuple (about 15 µs).

    *local* and *remote* are ``(host, port)`` as seen from that socket.
    Returns ``None`` when there is no such socket -- including when the
    kernel, not finding the 4-tuple, answers with the listener on that port
    (its fallback), which is detected and not passed off as a match.  With
    *cookie* (``SocketEntry.cookie``) a reused 4-tuple does not match
    either.  A listener is found with its bound address and remote
    ``("0.0.0.0", 0)`` (or ``("::", 0)``).

    Example::

        >>> import socket, struct, pysockkit as sk
        >>> srv = socket.create_server(("127.0.0.1", 0))
        >>> cli = socket.create_connection(srv.getsockname())
        >>> conn, peer = srv.accept()
        >>> sk.find_socket(conn.getsockname(), peer).state
        <TcpState.ESTABLISHED: 1>
        >>> conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
        ...                 struct.pack("ii", 1, 0))
        >>> here = conn.getsockname(); conn.close()  # RST: nothing is left
        >>> sk.find_socket(here, peer) is None  # not the listener it falls back to
        True
        >>> cli.close(); srv.close()
    """
    lhost = ipaddress.ip_address(str(local[0]).strip("[]"))
    rhost = ipaddress.ip_address(str(remote[0]).strip("[]"))
    if lhost.version != rhost.version:
        # one side IPv6: look the pair up as an AF_INET6 socket with mapped v4
        lhost = _as_v6(lhost)
        rhost = _as_v6(rhost)
    family = socket.AF_INET6 if lhost.version == 6 else socket.AF_INET
    t = _core.diag_lookup(
        int(family), str(lhost), _port(int(local[1]), "local port"),
        str(rhost), _port(int(remote[1]), "remote port"),
        cookie=cookie, with_info=bool(info),
    )
    return None if t is None else SocketEntry._from_core(t)


def _as_v6(
    a: Union[ipaddress.IPv4Address, ipaddress.IPv6Address],
) -> ipaddress.IPv6Address:
    if isinstance(a, ipaddress.IPv6Address):
        return a
    return ipaddress.IPv6Address("::ffff:" + str(a))
