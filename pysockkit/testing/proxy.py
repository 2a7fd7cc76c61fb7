"""FaultProxy: a TCP proxy that injects network faults, switchable live.

A :class:`FaultProxy` listens on loopback and forwards every client to an
upstream server.  Faults use toxiproxy's vocabulary and can be added and
removed at any time, also while connections are open, for one direction
or both: ``"upstream"`` is client -> server, ``"downstream"`` server ->
client.

============  ===========================================  ===================
fault         what it does                                 parameters
============  ===========================================  ===================
latency       holds each chunk ``ms`` (+- ``jitter_ms``)   ms, jitter_ms=0
bandwidth     paces the bytes to ``rate`` bytes/s          rate
stall         passes nothing, holds the connection open;   timeout_ms=0
              ``timeout_ms`` > 0 closes it after that
reset_peer    RST after ``delay_ms`` (upstream: to the     delay_ms=0
              server, downstream: to the client)
slow_close    delays forwarding an EOF (FIN) ``delay_ms``  delay_ms
slicer        writes slices of ``average_size`` +-         average_size=1,
              ``size_variation`` bytes, ``delay_us``       size_variation=0,
              apart: frames split at every boundary        delay_us=0
limit_data    closes the connection after ``bytes``        bytes
              bytes went through in that direction
============  ===========================================  ===================

Unlike toxiproxy's ``timeout`` toxic, ``stall`` drops nothing: bytes wait
in the proxy (then in the kernel, so the sender blocks) and go through
intact once the fault is removed.  Latency is stamped on bytes as they
arrive, so removing it does not hurry bytes already held; every other
fault takes effect at once.

The data path runs in C (``csrc/testkit/proxy.c``): an epoll reactor in its own
thread, never holding the GIL, with bounded buffers per connection and
direction (``buffer_size``), so a client that stops reading makes the
server's sends block, as it would without the proxy.

Example::

    >>> import pysockkit as sk
    >>> with sk.serve() as srv, sk.FaultProxy(srv.address) as proxy:
    ...     with sk.connect(proxy.address, timeout=2.0) as conn:
    ...         with proxy.fault("latency", ms=50, direction="downstream"):
    ...             conn.request(b"slow", timeout=2.0)
    b'slow'
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Union

from .. import _core
from .._errors import Timeout
from .._net import Address, AddressLike, check_timeout, format_address, resolve

__all__ = [
    "FaultProxy",
    "Fault",
    "Latency",
    "Bandwidth",
    "Stall",
    "ResetPeer",
    "SlowClose",
    "Slicer",
    "LimitData",
    "FaultHandle",
    "ProxyStats",
    "ProxiedConnection",
    "FAULTS",
    "Direction",
]

Direction = Literal["upstream", "downstream", "both"]

# The C side (csrc/binding/proxy.c): _core.Proxy and the FAULT_*/DIR_*/
# PROXY_* constants.  Reached through Any so this module type-checks with
# or without their stubs in _core.pyi.
_native: Any = _core

_DIRS: dict[str, int] = {
    "upstream": int(_native.DIR_UP),
    "downstream": int(_native.DIR_DOWN),
    "both": int(_native.DIR_UP) | int(_native.DIR_DOWN),
}


_MAX_DELAY_NS = 366 * 86400 * 10**9  # as csrc/testkit/proxy.c
_MAX_SLICE = 2**30


def _ns(value: float, what: str, scale: float) -> int:
    """A non-negative duration in ns from ``value`` (a number of units of
    ``scale`` ns); ValueError/TypeError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
    ns = int(round(value * scale))
    if ns > _MAX_DELAY_NS:
        raise ValueError(f"{what} is too large: {value!r} (at most a year)")
    return ns


def _count(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < minimum or value >= 2**63:
        raise ValueError(f"{what} must be an int >= {minimum}, not {value!r}")
    return value


class Fault:
    """Base of the fault specifications: frozen dataclasses naming one
    fault and its parameters.  ``name`` is the toxiproxy-style name that
    :meth:`FaultProxy.add` also accepts.

    Example::

        >>> sk.Latency(ms=20, jitter_ms=5).name
        'latency'
    """

    __slots__ = ()
    name: ClassVar[str] = ""
    _kind: ClassVar[str] = ""

    def _core_params(self) -> dict[str, int]:
        """Keyword arguments for ``_core.Proxy.add`` (raw ns and bytes)."""
        raise _not_ours(self)


def _not_ours(fault: Fault) -> TypeError:
    """Only this module's fault types are implemented by the proxy's C
    reactor: a subclass of one's own has nothing to run."""
    return TypeError(
        f"{type(fault).__name__} is not a fault the proxy implements: use one "
        "of sk.Latency, sk.Bandwidth, sk.Stall, sk.ResetPeer, sk.SlowClose, "
        "sk.Slicer or sk.LimitData"
    )


@dataclass(frozen=True, slots=True)
class Latency(Fault):
    """Hold each chunk ``ms`` milliseconds, plus or minus up to
    ``jitter_ms`` (uniform).  Bytes never change order, so with jitter a
    late chunk also holds back the ones behind it.

    Example::

        >>> sk.Latency(ms=50)
        Latency(ms=50, jitter_ms=0.0)
    """

    ms: float
    jitter_ms: float = 0.0
    name: ClassVar[str] = "latency"
    _kind: ClassVar[str] = "FAULT_LATENCY"

    def __post_init__(self) -> None:
        _ns(self.ms, "latency ms", 1e6)
        _ns(self.jitter_ms, "latency jitter_ms", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.ms, "ms", 1e6),
                "jitter_ns": _ns(self.jitter_ms, "jitter_ms", 1e6)}


@dataclass(frozen=True, slots=True)
class Bandwidth(Fault):
    """Limit the throughput to ``rate`` bytes per second (writes of about
    1 ms worth of bytes each).

    Example::

        >>> sk.Bandwidth(rate=10_000).rate
        10000
    """

    rate: int
    name: ClassVar[str] = "bandwidth"
    _kind: ClassVar[str] = "FAULT_BANDWIDTH"

    def __post_init__(self) -> None:
        _count(self.rate, "bandwidth rate (bytes/s)", 1)

    def _core_params(self) -> dict[str, int]:
        return {"rate": self.rate}


@dataclass(frozen=True, slots=True)
class Stall(Fault):
    """Pass nothing and hold the connection open.  Bytes (and an EOF) wait
    in the proxy, then in the kernel; removing the fault lets them through
    intact.  ``timeout_ms`` > 0 closes the connection that long after the
    fault applies.

    Example::

        >>> sk.Stall()
        Stall(timeout_ms=0.0)
    """

    timeout_ms: float = 0.0
    name: ClassVar[str] = "stall"
    _kind: ClassVar[str] = "FAULT_STALL"

    def __post_init__(self) -> None:
        _ns(self.timeout_ms, "stall timeout_ms", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.timeout_ms, "timeout_ms", 1e6)}


@dataclass(frozen=True, slots=True)
class ResetPeer(Fault):
    """``delay_ms`` after the fault applies to a connection, reset it:
    ``"downstream"`` sends RST to the client, ``"upstream"`` to the server,
    ``"both"`` to both (the side not reset sees an orderly close).

    Example::

        >>> sk.ResetPeer(delay_ms=100).delay_ms
        100
    """

    delay_ms: float = 0.0
    name: ClassVar[str] = "reset_peer"
    _kind: ClassVar[str] = "FAULT_RESET_PEER"

    def __post_init__(self) -> None:
        _ns(self.delay_ms, "reset_peer delay_ms", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.delay_ms, "delay_ms", 1e6)}


@dataclass(frozen=True, slots=True)
class SlowClose(Fault):
    """Forward an EOF (FIN) ``delay_ms`` after the last byte before it.

    Example::

        >>> sk.SlowClose(delay_ms=200).name
        'slow_close'
    """

    delay_ms: float
    name: ClassVar[str] = "slow_close"
    _kind: ClassVar[str] = "FAULT_SLOW_CLOSE"

    def __post_init__(self) -> None:
        _ns(self.delay_ms, "slow_close delay_ms", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.delay_ms, "delay_ms", 1e6)}


@dataclass(frozen=True, slots=True)
class Slicer(Fault):
    """Cut the stream into slices of ``average_size`` plus or minus up to
    ``size_variation`` bytes, written ``delay_us`` microseconds apart.  The
    defaults send one byte at a time, so a frame arrives split at every
    byte boundary.

    Example::

        >>> sk.Slicer(average_size=3, size_variation=2, delay_us=100)
        Slicer(average_size=3, size_variation=2, delay_us=100)
    """

    average_size: int = 1
    size_variation: int = 0
    delay_us: float = 0.0
    name: ClassVar[str] = "slicer"
    _kind: ClassVar[str] = "FAULT_SLICER"

    def __post_init__(self) -> None:
        _count(self.average_size, "slicer average_size", 1)
        if self.average_size > _MAX_SLICE:
            raise ValueError(f"slicer average_size must be at most {_MAX_SLICE}")
        _count(self.size_variation, "slicer size_variation", 0)
        if self.size_variation >= self.average_size:
            raise ValueError(
                f"slicer size_variation ({self.size_variation}) must be "
                f"smaller than average_size ({self.average_size})"
            )
        _ns(self.delay_us, "slicer delay_us", 1e3)

    def _core_params(self) -> dict[str, int]:
        return {"size": self.average_size, "size_var": self.size_variation,
                "delay_ns": _ns(self.delay_us, "delay_us", 1e3)}


@dataclass(frozen=True, slots=True)
class LimitData(Fault):
    """Close the connection (both sides, orderly) once ``bytes`` bytes went
    through in the fault's direction, counted from when it applies.  A
    reader then sees the stream end: mid-frame, ``sk.IncompleteFrame``; at
    a frame boundary, ``sk.ConnectionClosed``.

    Example::

        >>> sk.LimitData(bytes=10).bytes
        10
    """

    bytes: int
    name: ClassVar[str] = "limit_data"
    _kind: ClassVar[str] = "FAULT_LIMIT_DATA"

    def __post_init__(self) -> None:
        _count(self.bytes, "limit_data bytes", 0)

    def _core_params(self) -> dict[str, int]:
        return {"bytes": self.bytes}


FAULTS: dict[str, type[Fault]] = {
    cls.name: cls
    for cls in (Latency, Bandwidth, Stall, ResetPeer, SlowClose, Slicer, LimitData)
}


@dataclass(frozen=True, slots=True)
class FaultHandle:
    """A fault added to a proxy: what :meth:`FaultProxy.add` returns and
    :meth:`FaultProxy.remove` takes.

    Example::

        >>> h = proxy.add("latency", ms=10)
        >>> h.fault, h.direction
        (Latency(ms=10, jitter_ms=0.0), 'both')
        >>> proxy.remove(h)
        True
    """

    id: int
    fault: Fault
    direction: Direction


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters of a :class:`FaultProxy` (``proxy.stats``).

    ``bytes_upstream``/``bytes_downstream`` count bytes written to servers
    and to clients; ``buffered`` is what the proxy holds now (bounded by
    ``2 * buffer_size`` per connection) and ``buffered_peak`` the most it
    ever held at once.  ``resets``, ``limits`` and ``stall_closes`` count
    connections ended by reset_peer, limit_data and a stall's timeout.

    Example::

        >>> proxy.stats.connections
        1
    """

    connections: int
    accepted: int
    bytes_upstream: int
    bytes_downstream: int
    buffered: int
    buffered_peak: int
    upstream_failures: int
    resets: int
    limits: int
    stall_closes: int


@dataclass(frozen=True, slots=True)
class ProxiedConnection:
    """One connection through the proxy (``proxy.connections``).

    ``client`` is the client's address; ``upstream_local`` the proxy's end
    of the connection to the server (``None`` while that connect is in
    progress); the byte counts are what was written each way so far and
    what the proxy holds for each direction now.

    Example::

        >>> [c.client for c in proxy.connections] == [conn.local_address]
        True
    """

    client: Address
    upstream_local: Optional[Address]
    bytes_upstream: int
    bytes_downstream: int
    buffered_upstream: int
    buffered_downstream: int
    connecting: bool


def _make_fault(fault: Union[str, Fault], params: dict[str, Any]) -> Fault:
    if isinstance(fault, Fault):
        if type(fault) not in FAULTS.values():
            raise _not_ours(fault)
        if params:
            raise TypeError(
                f"pass parameters either in the {type(fault).__name__} or as "
                f"keywords, not both (got {sorted(params)})"
            )
        return fault
    if not isinstance(fault, str):
        raise TypeError(f"fault must be a name or a Fault, not {type(fault).__name__}")
    cls = FAULTS.get(fault)
    if cls is None:
        raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise TypeError(f"{fault}: {exc}") from None


def _direction(direction: str) -> int:
    try:
        return _DIRS[direction]
    except (KeyError, TypeError):
        raise ValueError(
            f"direction must be 'upstream' (client -> server), 'downstream' "
            f"(server -> client) or 'both', not {direction!r}"
        ) from None


class FaultProxy:
    """A TCP proxy on ``listen_addr`` forwarding every client to
    ``upstream_addr``, with faults that can be switched on and off while
    connections are live (see the module documentation for the list).

    Connect your client to ``proxy.address`` instead of the server.  Each
    connection gets ``buffer_size`` bytes of buffer per direction; at most
    ``max_connections`` are served at once (more wait in the backlog).
    ``seed`` makes jitter and slice sizes reproducible.  Closing the proxy
    closes every connection through it.  Using a closed proxy raises
    ``sk.ConnectionClosed``.

    Example::

        with sk.FaultProxy(srv.address) as proxy:
            conn = sk.connect(proxy.address)
            h = proxy.add("stall", direction="downstream")
            ...                       # replies are held
            proxy.remove(h)           # and now delivered, intact
    """

    __slots__ = ("_core", "_faults", "address", "upstream", "buffer_size", "__weakref__")

    def __init__(
        self,
        upstream_addr: AddressLike,
        listen_addr: AddressLike = ("127.0.0.1", 0),
        *,
        buffer_size: int = int(_native.PROXY_DEFAULT_BUFFER),
        max_connections: int = 1024,
        seed: Optional[int] = None,
    ) -> None:
        _count(buffer_size, "buffer_size", int(_native.PROXY_MIN_BUFFER))
        if buffer_size > int(_native.PROXY_MAX_BUFFER):
            raise ValueError(f"buffer_size must be at most {int(_native.PROXY_MAX_BUFFER)}")
        _count(max_connections, "max_connections", 1)
        if max_connections >= 2**31:
            raise ValueError("max_connections is too large")
        if seed is not None:
            _count(seed, "seed", 0)
        ufam, uhost, uport = resolve(upstream_addr, "upstream_addr")[0]
        lfam, lhost, lport = resolve(listen_addr, "listen_addr")[0]
        self._faults: dict[int, FaultHandle] = {}
        self._core: Optional[Any] = None
        self._core = _native.Proxy(
            uhost, uport, ufam, lhost, lport, lfam,
            buffer_size=buffer_size,
            max_connections=max_connections,
            seed=(seed or 0) & (2**64 - 1),
        )
        self.upstream: Address = (uhost, uport)
        self.buffer_size = buffer_size
        self.address: Address = _core.sockname(self._core.fileno())

    # ------------------------------------------------------------ faults

    def _proxy(self) -> Any:
        if self._core is None:
            from .._errors import ConnectionClosed

            raise ConnectionClosed("this FaultProxy was closed; make a new one")
        return self._core

    def add(
        self,
        fault: Union[str, Fault],
        direction: Direction = "both",
        **params: Any,
    ) -> FaultHandle:
        """Switch a fault on, at once, for new and open connections.

        ``fault`` is a name (``"latency"``, ``"bandwidth"``, ``"stall"``,
        ``"reset_peer"``, ``"slow_close"``, ``"slicer"``, ``"limit_data"``)
        with its parameters as keywords, or a fault object
        (``sk.Latency(ms=50)``).  Several faults may be on at once:
        latencies add up, the lowest bandwidth wins, the newest slicer and
        limit_data win.  Returns a handle for :meth:`remove`.

        Example::

            >>> h = proxy.add("latency", ms=100, jitter_ms=10, direction="downstream")
            >>> proxy.add(sk.Bandwidth(rate=1_000_000))
            FaultHandle(id=2, fault=Bandwidth(rate=1000000), direction='both')
        """
        spec = _make_fault(fault, params)
        dirs = _direction(direction)
        core = self._proxy()
        fid = core.add(getattr(_native, spec._kind), dirs, **spec._core_params())
        handle = FaultHandle(int(fid), spec, direction)
        self._faults[handle.id] = handle
        return handle

    def remove(self, handle: Union[FaultHandle, int]) -> bool:
        """Switch a fault off.  True if it was on; removing it twice (or
        after :meth:`clear`) is harmless and returns False.

        Example::

            >>> proxy.remove(h)
            True
        """
        if isinstance(handle, FaultHandle):
            fid = handle.id
        elif isinstance(handle, int) and not isinstance(handle, bool):
            fid = handle
        else:
            raise TypeError(f"remove() takes a FaultHandle, not {type(handle).__name__}")
        self._faults.pop(fid, None)
        return bool(self._proxy().remove(fid))

    def clear(self) -> None:
        """Switch every fault off.

        Example::

            >>> proxy.clear(); proxy.faults
            []
        """
        self._faults.clear()
        self._proxy().clear()

    @property
    def faults(self) -> list[FaultHandle]:
        """The faults switched on, oldest first.

        Example::

            >>> [h.fault.name for h in proxy.faults]
            ['latency']
        """
        return sorted(self._faults.values(), key=lambda h: h.id)

    @contextlib.contextmanager
    def fault(
        self,
        fault: Union[str, Fault],
        direction: Direction = "both",
        **params: Any,
    ) -> Iterator[FaultHandle]:
        """Switch a fault on for the duration of a ``with`` block.

        Example::

            with proxy.fault("stall", direction="downstream"):
                with pytest.raises(sk.Timeout):
                    conn.request(b"x", timeout=0.2)
        """
        handle = self.add(fault, direction, **params)
        try:
            yield handle
        finally:
            if self._core is not None:
                self.remove(handle)

    # ------------------------------------------------------------ state

    @property
    def stats(self) -> ProxyStats:
        """Counters (bytes each way, connections, buffered bytes, ...).

        Example::

            >>> proxy.stats.bytes_upstream
            12
        """
        s = self._proxy().stats()
        return ProxyStats(
            connections=s["active"],
            accepted=s["accepted"],
            bytes_upstream=s["bytes_up"],
            bytes_downstream=s["bytes_down"],
            buffered=s["buffered"],
            buffered_peak=s["buffered_peak"],
            upstream_failures=s["upstream_failures"],
            resets=s["resets"],
            limits=s["limits"],
            stall_closes=s["stall_closes"],
        )

    @property
    def connections(self) -> list[ProxiedConnection]:
        """The connections open through the proxy, oldest first.

        Example::

            >>> len(proxy.connections)
            1
        """
        return [ProxiedConnection(*row) for row in self._proxy().connections()]

    def wait_connections(self, count: int,
                         timeout: Optional[float] = 5.0) -> list[ProxiedConnection]:
        """Wait until exactly ``count`` connections are open through the
        proxy, their upstream connects done (the proxy accepts clients in
        its own thread, a moment after their ``connect`` returned).
        Raises ``sk.Timeout``.

        Example::

            >>> conn = sk.connect(proxy.address)
            >>> [c.connecting for c in proxy.wait_connections(1)]
            [False]
        """
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            conns = self.connections
            if len(conns) == count and not any(c.connecting for c in conns):
                return conns
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"{len(conns)} connection(s) through the proxy after "
                    f"{timeout} s, expected {count}"
                )
            time.sleep(0.002)

    @property
    def last_error(self) -> Optional[str]:
        """The last error the proxy met on its own (an upstream connect
        refused, out of descriptors), or None.

        Example::

            >>> proxy.last_error
            'connect(upstream): Connection refused'
        """
        err = self._proxy().last_error()
        return None if err is None else str(err[1])

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._core is None

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop the proxy: close every connection through it (orderly) and
        the listener, and join its thread.  Idempotent.

        Example::

            proxy.close()
        """
        core, self._core = self._core, None
        self._faults.clear()
        if core is not None:
            core.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_core", None) is not None:
            warnings.warn(
                f"unclosed pysockkit FaultProxy {format_address(self.address)}",
                ResourceWarning, stacklevel=2,
            )
            self.close()

    def __repr__(self) -> str:
        if self._core is None:
            return "<pysockkit.FaultProxy closed>"
        a, u = self.address, self.upstream
        faults = ", ".join(f"{h.fault.name}/{h.direction}" for h in self.faults) or "no faults"
        return f"<pysockkit.FaultProxy {format_address(a)} -> {format_address(u)} ({faults})>"
