"""assert_state: poll a socket's TCP state until it is the expected one;
on failure, list every transition seen."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union

from .. import _core
from .._enums import StateLike, TcpState, as_states
from .._net import check_timeout, format_address, parse_address

_GONE = "gone"  # label for "the kernel no longer knows this socket"


def _fd_of(target: Any) -> Optional[int]:
    """The descriptor of a socket-like target (-1 once closed), or None if
    the target is not socket-like."""
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    fileno = getattr(target, "fileno", None)
    if callable(fileno):
        try:
            return int(fileno())
        except (OSError, ValueError):
            return -1
    return None


Probe = Callable[[], dict[str, Optional[TcpState]]]


def _diag_probe(local: Sequence[Any], remote: Sequence[Any], cookie: Optional[int]) -> Probe:
    from .._observe import find_socket

    label = f"{format_address(local)} -> {format_address(remote)}"
    loc = (str(local[0]), int(local[1]))
    rem = (str(remote[0]), int(remote[1]))

    def probe() -> dict[str, Optional[TcpState]]:
        e = find_socket(loc, rem, cookie=cookie)
        return {label: None if e is None else e.state}

    return probe


def _prober(target: Any) -> tuple[str, Probe]:
    """(description, probe) for a target; probe() maps a label per socket
    to its state (None: the kernel forgot it, i.e. CLOSED)."""
    fd = _fd_of(target)
    if fd is not None:
        if fd < 0:
            desc = f"{type(target).__name__} (closed)"
            return desc, lambda: {desc: TcpState.CLOSED}
        tup: Optional[tuple[tuple[str, int], tuple[str, int]]] = None
        try:
            tup = (_core.sockname(fd), _core.peername(fd))
        except OSError:
            tup = None  # not connected (yet): a listener or a fresh socket
        desc = f"{type(target).__name__} fd {fd}"
        if tup is not None:
            desc += f" {format_address(tup[0])} -> {format_address(tup[1])}"
        diag = None if tup is None else _diag_probe(tup[0], tup[1], None)

        def probe() -> dict[str, Optional[TcpState]]:
            from .._observe import fd_state

            cur = _fd_of(target)
            if cur is not None and cur >= 0:
                try:
                    st = fd_state(cur)
                    # a bare descriptor number may have been closed and
                    # reused by another socket meanwhile
                    if tup is None or (_core.sockname(cur), _core.peername(cur)) == tup:
                        return {desc: st}
                except (OSError, ValueError):
                    pass
            # closed by now: follow the same connection through sock_diag
            if diag is not None:
                return {desc: next(iter(diag().values()))}
            return {desc: TcpState.CLOSED}

        return desc, probe
    four = getattr(target, "four_tuple", None)  # a lab Scene
    if four is not None:
        lh, lp, rh, rp = four
        d = f"{format_address((lh, lp))} -> {format_address((rh, rp))}"
        return d, _diag_probe((lh, lp), (rh, rp), None)
    if hasattr(target, "local") and hasattr(target, "remote"):  # SocketEntry
        d = f"{format_address(target.local)} -> {format_address(target.remote)}"
        return d, _diag_probe(target.local, target.remote, getattr(target, "cookie", None))
    if isinstance(target, str):
        return _local_prober(parse_address(target, name="target"))
    if isinstance(target, (tuple, list)) and len(target) == 2:
        a, b = target
        if isinstance(a, (tuple, list, str)) and isinstance(b, (tuple, list, str)):
            a = parse_address(a, name="target[0] (the local address)")
            b = parse_address(b, name="target[1] (the remote address)")
            return f"{format_address(a)} -> {format_address(b)}", _diag_probe(a, b, None)
        if isinstance(a, str) and isinstance(b, int):
            return _local_prober(parse_address(target, name="target"))
    raise TypeError(
        "assert_state() needs a socket (a Connection, a stdlib socket, anything "
        "with fileno(), a descriptor), a local address ((host, port) or 'host:port'), "
        "a pair ((local_host, local_port), (remote_host, remote_port)) or a SocketEntry; "
        f"got {target!r}"
    )


def _local_prober(addr: tuple[str, int]) -> tuple[str, Probe]:
    """Every TCP socket bound to a local address (a listener and its
    accepted connections share one), labelled by their peer."""
    from .._observe import sockets

    desc = f"sockets on {format_address(addr)}"

    def probe() -> dict[str, Optional[TcpState]]:
        out: dict[str, Optional[TcpState]] = {}
        for e in sockets(local_address=addr[0], local_port=addr[1]):
            label = f"{format_address(e.local)} -> {format_address(e.remote)}"
            if e.remote[1] == 0:
                label = f"{format_address(e.local)} (listener)"
            out[label] = e.state
        return out

    return desc, probe


def _fmt_transitions(history: dict[str, list[tuple[float, Optional[TcpState]]]]) -> str:
    lines: list[str] = []
    for label, hist in history.items():
        lines.append(f"  {label}")
        for t, st in hist:
            name = "CLOSED (gone from the kernel)" if st is None else st.name
            lines.append(f"    {t * 1e3:9.1f} ms  {name}")
    return "\n".join(lines) if lines else "  (no socket found)"


def assert_state(
    target: Any,
    state: Union[StateLike, Iterable[StateLike]],
    within: float = 1.0,
    *,
    interval: float = 0.001,
) -> TcpState:
    """Wait until ``target`` is in ``state`` (or in any of several states)
    and return the state reached; fail with the observed transitions if it
    is not reached within ``within`` seconds.

    ``target`` is a pysockkit ``Connection``, a stdlib socket, anything with
    ``fileno()`` or a descriptor (read by TCP_INFO; once closed, the same
    connection is followed by its 4-tuple through sock_diag, so TIME_WAIT
    and LAST_ACK of an orphan are seen, and a socket the kernel forgot is
    ``CLOSED``); a local address ``(host, port)`` (every socket bound to it,
    e.g. a server port: one of them must reach the state); a pair
    ``((local_host, local_port), (remote_host, remote_port))``; a
    ``SocketEntry``; or a lab scene.  States are ``TcpState`` members,
    numbers or names (``"CLOSE_WAIT"``, ``"close-wait"``, ``"TIME-WAIT"``).

    Example::

        >>> cli.close()
        >>> assert_state(peer, "CLOSE_WAIT", within=1.0)
        <TcpState.CLOSE_WAIT: 8>
        >>> assert_state(peer, "LISTEN", within=0.05)
        Traceback (most recent call last):
        AssertionError: Connection fd 7 127.0.0.1:40001 -> 127.0.0.1:52344 did
        not reach LISTEN within 0.05 s; observed:
          Connection fd 7 127.0.0.1:40001 -> 127.0.0.1:52344
                0.0 ms  CLOSE_WAIT
    """
    __tracebackhide__ = True
    wanted = as_states(state, "assert_state()")
    within = check_timeout(within, "within", allow_none=False)
    interval = check_timeout(interval, "interval", allow_none=False)
    desc, probe = _prober(target)
    history: dict[str, list[tuple[float, Optional[TcpState]]]] = {}
    t0 = time.monotonic()
    deadline = t0 + within
    while True:
        now = time.monotonic()
        seen = probe()
        for label, st in seen.items():
            hist = history.setdefault(label, [])
            if not hist or hist[-1][1] is not st:
                hist.append((now - t0, st))
        for st in seen.values():
            eff = TcpState.CLOSED if st is None else st
            if eff in wanted:
                return eff
        if now >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - now)))
    names = " or ".join(sorted(s.name for s in wanted))
    raise AssertionError(
        f"{desc} did not reach {names} within {within} s; observed:\n"
        f"{_fmt_transitions(history)}"
    )
