"""FaultProxy: a TCP proxy that injects network faults, switchable live,
in toxiproxy's vocabulary.

A :class:`FaultProxy` listens on loopback and forwards every client to an
upstream server.  Faults are toxiproxy's toxics, with its names, attribute
names, units and defaults, and can be added, updated in place and removed
at any time, also while connections are open, for one direction (toxiproxy's
stream: ``"downstream"``, server -> client, by default; ``"upstream"``,
client -> server) or ``"both"``.

============  ===========================================  ===================
toxic         what it does                                 attributes
============  ===========================================  ===================
latency       holds each chunk ``latency`` ms              latency, jitter=0
              (+- ``jitter`` ms); no throughput cap
bandwidth     paces the bytes to ``rate`` KB/s             rate
timeout       drops all data; closes the connection        timeout=0
              ``timeout`` ms after (0: never)
reset_peer    RST ``timeout`` ms after the first data      timeout=0
              (downstream: to the client, upstream: to
              the server)
slow_close    delays forwarding an EOF (FIN) ``delay`` ms  delay
slicer        writes slices of ``average_size`` +-         average_size=1,
              ``size_variation`` bytes, ``delay`` us       size_variation=0,
              apart: frames split at every boundary        delay=0
limit_data    closes the connection after ``bytes``        bytes
              bytes went through in that direction
stall         (pysockkit's) passes nothing, holds the      timeout=0
              connection open; bytes go through intact
              once removed; ``timeout`` > 0 closes it
============  ===========================================  ===================

Every toxic also has ``toxicity`` (the probability, drawn per connection,
that it acts on that connection) and a ``name`` (unique; toxiproxy's
default ``"<type>_<stream>"``).  The names pysockkit used before 0.x took
toxiproxy's (``ms``, ``jitter_ms``, ``delay_ms``, ``delay_us``,
``timeout_ms``) raise a TypeError naming the new one; bandwidth's ``rate``
kept its name but is now in KB/s as in toxiproxy (it was bytes/s).
:meth:`FaultProxy.from_toxiproxy` builds a proxy from toxiproxy's JSON.
Latency is stamped on bytes as they arrive, so removing it does not hurry
bytes already held; every other fault takes effect at once.

The data path runs in C (``csrc/testkit/proxy.c``): an epoll reactor in its own
thread, never holding the GIL, with bounded buffers per connection and
direction (``buffer_size`` for bytes that are due; bytes that latency
holds are in flight and bounded separately), so a client that stops
reading makes the server's sends block, as it would without the proxy.

Example::

    >>> import pysockkit as sk
    >>> with sk.serve() as srv, sk.FaultProxy(srv.address) as proxy:
    ...     with sk.connect(proxy.address, timeout=2.0) as conn:
    ...         with proxy.fault("latency", latency=50):
    ...             conn.request(b"slow", timeout=2.0)
    b'slow'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, TypeVar, Union

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
    "TimeoutFault",
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
_MAX_RATE_KBPS = 2**50 // 1000  # as csrc/proxy.c (bytes/s / 1000)


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
    fault (a toxiproxy "toxic") and its attributes, with toxiproxy's names
    and units.  ``name`` is the toxic type that :meth:`FaultProxy.add` also
    accepts.

    Example::

        >>> sk.Latency(latency=20, jitter=5).name
        'latency'
    """

    __slots__ = ()
    name: ClassVar[str] = ""
    _kind: ClassVar[str] = ""
    # pysockkit < 0.x names of attributes -> toxiproxy's (see _renamed)
    _renamed: ClassVar[dict[str, str]] = {}

    def _core_params(self) -> dict[str, int]:
        """Keyword arguments for ``_core.Proxy.add`` (raw ns and bytes)."""
        raise _not_ours(self)


def _not_ours(fault: Fault) -> TypeError:
    """Only this module's fault types are implemented by the proxy's C
    reactor: a subclass of one's own has nothing to run."""
    return TypeError(
        f"{type(fault).__name__} is not a fault the proxy implements: use one "
        "of sk.Latency, sk.Bandwidth, sk.Stall, sk.TimeoutFault, sk.ResetPeer, "
        "sk.SlowClose, sk.Slicer or sk.LimitData"
    )


_F = TypeVar("_F", bound=type)


def _renamed(cls: _F) -> _F:
    """Give ``cls`` (a fault dataclass) a clear error for the attribute
    names pysockkit used before it took toxiproxy's: ``Latency(ms=50)``
    raises a TypeError naming ``latency`` instead of "unexpected keyword"."""
    init = cls.__init__  # type: ignore[misc]
    renamed: dict[str, str] = cls._renamed  # type: ignore[attr-defined]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for old, new in renamed.items():
            if old in kwargs:
                raise TypeError(
                    f"{cls.__name__}: {old!r} was renamed to toxiproxy's {new}"
                )
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__  # type: ignore[misc]
    return cls


@_renamed
@dataclass(frozen=True, slots=True)
class Latency(Fault):
    """toxiproxy's ``latency``: hold each chunk ``latency`` milliseconds,
    plus or minus up to ``jitter`` ms (uniform).  Bytes never change order,
    so with jitter a late chunk also holds back the ones behind it.  Held
    bytes are in flight, not buffered: latency delays bytes without
    limiting throughput.

    Example::

        >>> sk.Latency(latency=50)
        Latency(latency=50, jitter=0.0)
    """

    latency: float
    jitter: float = 0.0
    name: ClassVar[str] = "latency"
    _kind: ClassVar[str] = "FAULT_LATENCY"
    _renamed: ClassVar[dict[str, str]] = {
        "ms": "'latency' (milliseconds)", "jitter_ms": "'jitter' (milliseconds)"}

    def __post_init__(self) -> None:
        _ns(self.latency, "latency latency (ms)", 1e6)
        _ns(self.jitter, "latency jitter (ms)", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.latency, "latency", 1e6),
                "jitter_ns": _ns(self.jitter, "jitter", 1e6)}


@_renamed
@dataclass(frozen=True, slots=True)
class Bandwidth(Fault):
    """toxiproxy's ``bandwidth``: limit the throughput to ``rate`` KB/s
    (1 KB = 1000 bytes, as toxiproxy counts; fractions allowed), within 2 %
    from 10 KB/s to 100 MB/s (``bench/proxy_exact.py``).

    Example::

        >>> sk.Bandwidth(rate=100).rate     # 100 KB/s = 100,000 bytes/s
        100
    """

    rate: float
    name: ClassVar[str] = "bandwidth"
    _kind: ClassVar[str] = "FAULT_BANDWIDTH"

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)):
            raise TypeError(f"bandwidth rate must be a number of KB/s, not {type(self.rate).__name__}")
        if not math.isfinite(self.rate) or not 0.001 <= self.rate <= _MAX_RATE_KBPS:
            raise ValueError(
                f"bandwidth rate is in KB/s (toxiproxy's unit) and must be "
                f"0.001..{_MAX_RATE_KBPS}, not {self.rate!r}"
            )

    def _core_params(self) -> dict[str, int]:
        return {"rate": max(1, int(round(self.rate * 1000)))}


@_renamed
@dataclass(frozen=True, slots=True)
class Stall(Fault):
    """pysockkit's ``stall`` (not in toxiproxy): pass nothing and hold the
    connection open.  Bytes (and an EOF) wait in the proxy, then in the
    kernel; removing the fault lets them through intact.  ``timeout`` > 0
    (ms) closes the connection that long after the fault applies.  For
    toxiproxy's data-dropping behaviour use ``timeout``
    (:class:`TimeoutFault`).

    Example::

        >>> sk.Stall()
        Stall(timeout=0.0)
    """

    timeout: float = 0.0
    name: ClassVar[str] = "stall"
    _kind: ClassVar[str] = "FAULT_STALL"
    _renamed: ClassVar[dict[str, str]] = {"timeout_ms": "'timeout' (milliseconds)"}

    def __post_init__(self) -> None:
        _ns(self.timeout, "stall timeout (ms)", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.timeout, "timeout", 1e6)}


@_renamed
@dataclass(frozen=True, slots=True)
class TimeoutFault(Fault):
    """toxiproxy's ``timeout``: stop all data from getting through (bytes
    are read and dropped; an EOF is held) and close the connection
    ``timeout`` ms after the fault applies; with 0, hold it until the fault
    is removed.

    Example::

        >>> sk.TimeoutFault(timeout=100).name
        'timeout'
    """

    timeout: float = 0.0
    name: ClassVar[str] = "timeout"
    _kind: ClassVar[str] = "FAULT_TIMEOUT"

    def __post_init__(self) -> None:
        _ns(self.timeout, "timeout timeout (ms)", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.timeout, "timeout", 1e6)}


@_renamed
@dataclass(frozen=True, slots=True)
class ResetPeer(Fault):
    """toxiproxy's ``reset_peer``: ``timeout`` ms after the first byte
    a connection carries in the fault's direction (once the fault is in
    place), reset it: ``"downstream"`` sends RST to the client,
    ``"upstream"`` to the server, ``"both"`` to both (the side not reset
    sees an orderly close).  An idle connection is never reset.

    Example::

        >>> sk.ResetPeer(timeout=100).timeout
        100
    """

    timeout: float = 0.0
    name: ClassVar[str] = "reset_peer"
    _kind: ClassVar[str] = "FAULT_RESET_PEER"
    _renamed: ClassVar[dict[str, str]] = {"delay_ms": "'timeout' (milliseconds)"}

    def __post_init__(self) -> None:
        _ns(self.timeout, "reset_peer timeout (ms)", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.timeout, "timeout", 1e6)}


@_renamed
@dataclass(frozen=True, slots=True)
class SlowClose(Fault):
    """toxiproxy's ``slow_close``: forward an EOF (FIN) ``delay`` ms after
    the last byte before it.

    Example::

        >>> sk.SlowClose(delay=200).name
        'slow_close'
    """

    delay: float
    name: ClassVar[str] = "slow_close"
    _kind: ClassVar[str] = "FAULT_SLOW_CLOSE"
    _renamed: ClassVar[dict[str, str]] = {"delay_ms": "'delay' (milliseconds)"}

    def __post_init__(self) -> None:
        _ns(self.delay, "slow_close delay (ms)", 1e6)

    def _core_params(self) -> dict[str, int]:
        return {"delay_ns": _ns(self.delay, "delay", 1e6)}


@_renamed
@dataclass(frozen=True, slots=True)
class Slicer(Fault):
    """toxiproxy's ``slicer``: cut the stream into slices of
    ``average_size`` plus or minus up to ``size_variation`` bytes, written
    ``delay`` microseconds apart.  The defaults send one byte at a time,
    so a frame arrives split at every byte boundary.

    Example::

        >>> sk.Slicer(average_size=3, size_variation=2, delay=100)
        Slicer(average_size=3, size_variation=2, delay=100)
    """

    average_size: int = 1
    size_variation: int = 0
    delay: float = 0.0
    name: ClassVar[str] = "slicer"
    _kind: ClassVar[str] = "FAULT_SLICER"
    _renamed: ClassVar[dict[str, str]] = {"delay_us": "'delay' (microseconds)"}

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
        _ns(self.delay, "slicer delay (us)", 1e3)

    def _core_params(self) -> dict[str, int]:
        return {"size": self.average_size, "size_var": self.size_variation,
                "delay_ns": _ns(self.delay, "delay", 1e3)}


@_renamed
@dataclass(frozen=True, slots=True)
class LimitData(Fault):
    """toxiproxy's ``limit_data``: close the connection (both sides,
    orderly) once ``bytes`` bytes went through in the fault's direction,
    counted from when it applies.  A reader then sees the stream end:
    mid-frame, ``sk.IncompleteFrame``; at a frame boundary,
    ``sk.ConnectionClosed``.

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
    for cls in (Latency, Bandwidth, Stall, TimeoutFault, ResetPeer, SlowClose,
                Slicer, LimitData)
}


@dataclass(frozen=True, slots=True)
class FaultHandle:
    """A fault added to a proxy (a toxiproxy toxic): what
    :meth:`FaultProxy.add` returns and :meth:`FaultProxy.remove` and
    :meth:`FaultProxy.update` take.  ``name`` is unique per proxy
    (toxiproxy's default: ``"<type>_<stream>"``); ``toxicity`` the
    probability that it acts on a given connection.

    Example::

        >>> h = proxy.add("latency", latency=10)
        >>> h.fault, h.direction, h.name
        (Latency(latency=10, jitter=0.0), 'downstream', 'latency_downstream')
        >>> proxy.remove(h)
        True
    """

    id: int
    fault: Fault
    direction: Direction
    name: str = ""
    toxicity: float = 1.0


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
            f"direction (toxiproxy's stream) must be 'downstream' (server -> "
            f"client; the default), 'upstream' (client -> server) or 'both', "
            f"not {direction!r}"
        ) from None


def _spare(toxicity: float) -> float:
    """The C side's ``spare`` (1 - toxicity), checking toxicity."""
    if isinstance(toxicity, bool) or not isinstance(toxicity, (int, float)):
        raise TypeError(f"toxicity must be a number 0..1, not {type(toxicity).__name__}")
    if not 0.0 <= toxicity <= 1.0:
        raise ValueError(f"toxicity is a probability per connection, 0..1, not {toxicity!r}")
    return 1.0 - float(toxicity)


def _load_config(config: Union[str, bytes, "os.PathLike[str]", list[Any], dict[str, Any]]) -> Any:
    """toxiproxy JSON (text, bytes, a path, or already parsed)."""
    if isinstance(config, os.PathLike):
        with open(config, "rb") as f:
            config = f.read()
    if isinstance(config, (str, bytes)):
        try:
            return json.loads(config)
        except ValueError as exc:
            raise ValueError(f"not toxiproxy JSON: {exc}") from None
    return config


def _config_proxies(cfg: Any) -> list[dict[str, Any]]:
    """The proxies of a toxiproxy config: a list (the -config file), a dict
    of name -> proxy (GET /proxies) or one proxy."""
    if isinstance(cfg, dict) and "upstream" in cfg:
        items: list[Any] = [cfg]
    elif isinstance(cfg, dict):
        items = [dict(v, name=v.get("name", k)) if isinstance(v, dict) else v
                 for k, v in cfg.items()]
    elif isinstance(cfg, list):
        items = cfg
    else:
        raise ValueError(f"toxiproxy config must be a list or an object of proxies, not {type(cfg).__name__}")
    for item in items:
        if not isinstance(item, dict) or "upstream" not in item:
            raise ValueError(f"a toxiproxy proxy needs at least 'upstream': {item!r}")
    return items


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
            h = proxy.add("stall")    # downstream, toxiproxy's default
            ...                       # replies are held
            proxy.remove(h)           # and now delivered, intact
    """

    __slots__ = ("_core", "_faults", "_enabled", "address", "upstream", "buffer_size",
                 "name", "__weakref__")
    # proxies made so far in this process: the pytest plugin leak-checks a
    # test that makes one
    _made: ClassVar[int] = 0

    def __init__(
        self,
        upstream_addr: AddressLike,
        listen_addr: AddressLike = ("127.0.0.1", 0),
        *,
        buffer_size: int = int(_native.PROXY_DEFAULT_BUFFER),
        max_connections: int = 1024,
        seed: Optional[int] = None,
        name: str = "",
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
        self._enabled = True
        self.name = name
        self._core: Optional[Any] = None
        self._core = _native.Proxy(
            uhost, uport, ufam, lhost, lport, lfam,
            buffer_size=buffer_size,
            max_connections=max_connections,
            seed=(seed or 0) & (2**64 - 1),
        )
        FaultProxy._made += 1
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
        direction: Direction = "downstream",
        *,
        name: Optional[str] = None,
        toxicity: float = 1.0,
        **params: Any,
    ) -> FaultHandle:
        """Switch a fault (a toxiproxy toxic) on, at once, for new and open
        connections.

        ``fault`` is a toxic type (``"latency"``, ``"bandwidth"``,
        ``"timeout"``, ``"reset_peer"``, ``"slow_close"``, ``"slicer"``,
        ``"limit_data"``, and pysockkit's ``"stall"``) with its attributes
        as keywords, in toxiproxy's names and units, or a fault object
        (``sk.Latency(latency=50)``).  ``direction`` is toxiproxy's stream:
        ``"downstream"`` (server -> client) by default, ``"upstream"``, or
        ``"both"``.  ``name`` must be unique (default: toxiproxy's
        ``"<type>_<stream>"``, with the fault's id appended if that is
        taken); ``toxicity`` is the probability that the fault acts on a
        connection (drawn once per connection).  Several faults may be on
        at once: latencies add up, the lowest bandwidth wins, the newest
        slicer and limit_data win.  Returns a handle for :meth:`remove` and
        :meth:`update`.

        Example::

            >>> h = proxy.add("latency", latency=100, jitter=10)
            >>> proxy.add(sk.Bandwidth(rate=1000), "upstream", name="slow_up")
            FaultHandle(id=2, fault=Bandwidth(rate=1000), direction='upstream', name='slow_up', toxicity=1.0)
        """
        spec = _make_fault(fault, params)
        dirs = _direction(direction)
        spare = _spare(toxicity)
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a fault's name must be a non-empty string, not {name!r}")
            if self._by_name(name) is not None:
                raise ValueError(
                    f"this proxy already has a fault named {name!r}: update it "
                    "(proxy.update) or remove it first"
                )
        core = self._proxy()
        fid = int(core.add(getattr(_native, spec._kind), dirs, spare=spare,
                           **spec._core_params()))
        if name is None:
            name = f"{spec.name}_{direction}"
            if self._by_name(name) is not None:
                name = f"{name}_{fid}"
        handle = FaultHandle(fid, spec, direction, name, float(toxicity))
        self._faults[handle.id] = handle
        return handle

    def update(
        self,
        handle: Union[FaultHandle, int, str],
        *,
        toxicity: Optional[float] = None,
        **attributes: Any,
    ) -> FaultHandle:
        """Change a fault's attributes (and toxicity) in place, as
        toxiproxy's toxic update does: it keeps its name, direction, id and
        what it counted (limit_data's bytes, reset_peer's start).  Returns
        the new handle.  KeyError if no such fault is on.

        Example::

            >>> proxy.add("latency", latency=100, name="lag")
            >>> proxy.update("lag", latency=10).fault
            Latency(latency=10, jitter=0.0)
        """
        old = self._find(handle)
        try:
            spec = dataclasses.replace(old.fault, **attributes)  # type: ignore[type-var]
        except TypeError as exc:
            raise TypeError(f"{old.fault.name}: {exc}") from None
        tox = old.toxicity if toxicity is None else toxicity
        ok = self._proxy().update(old.id, getattr(_native, spec._kind),
                                  _DIRS[old.direction], spare=_spare(tox),
                                  **spec._core_params())
        if not ok:  # removed by another thread meanwhile
            self._faults.pop(old.id, None)
            raise KeyError(f"no fault {old.name!r} on this proxy")
        new = FaultHandle(old.id, spec, old.direction, old.name, float(tox))
        self._faults[old.id] = new
        return new

    def _by_name(self, name: str) -> Optional[FaultHandle]:
        for h in self._faults.values():
            if h.name == name:
                return h
        return None

    def _find(self, handle: Union[FaultHandle, int, str]) -> FaultHandle:
        if isinstance(handle, str):
            found = self._by_name(handle)
        elif isinstance(handle, FaultHandle):
            found = self._faults.get(handle.id)
        elif isinstance(handle, int) and not isinstance(handle, bool):
            found = self._faults.get(handle)
        else:
            raise TypeError(f"a fault is named by its handle, id or name, not {type(handle).__name__}")
        if found is None:
            raise KeyError(f"no fault {handle!r} on this proxy; on now: "
                           f"{[h.name for h in self.faults]}")
        return found

    def remove(self, handle: Union[FaultHandle, int, str]) -> bool:
        """Switch a fault off (by handle, id or name).  True if it was on;
        removing it twice (or after :meth:`clear`) is harmless and returns
        False.

        Example::

            >>> proxy.remove(h)
            True
            >>> proxy.remove("latency_downstream")
            False
        """
        if isinstance(handle, FaultHandle):
            fid = handle.id
        elif isinstance(handle, int) and not isinstance(handle, bool):
            fid = handle
        elif isinstance(handle, str):
            found = self._by_name(handle)
            if found is None:
                self._proxy()
                return False
            fid = found.id
        else:
            raise TypeError(f"remove() takes a FaultHandle, id or name, not {type(handle).__name__}")
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

            >>> [h.name for h in proxy.faults]
            ['latency_downstream']
        """
        return sorted(self._faults.values(), key=lambda h: h.id)

    # ------------------------------------------------------------ toxiproxy

    @property
    def enabled(self) -> bool:
        """toxiproxy's ``enabled``: False after :meth:`disable`.

        Example::

            >>> proxy.enabled
            True
        """
        return self._enabled

    def disable(self) -> None:
        """Take the proxy down as toxiproxy's ``"enabled": false`` does:
        close its listener (new clients are refused) and every connection
        through it.  Its faults stay; :meth:`enable` brings it back on the
        same address.

        Example::

            proxy.disable()
            with pytest.raises(OSError):      # connection refused
                sk.connect(proxy.address, timeout=1.0)
            proxy.enable()
        """
        self._proxy().set_enabled(False)
        self._enabled = False

    def enable(self) -> None:
        """Listen again on the same address after :meth:`disable` (raises
        ``sk.Error`` if another socket took the port meanwhile).

        Example::

            proxy.enable()
        """
        self._proxy().set_enabled(True)
        self._enabled = True

    @classmethod
    def from_toxiproxy(
        cls,
        config: Union[str, bytes, "os.PathLike[str]", list[Any], dict[str, Any]],
        name: Optional[str] = None,
        **options: Any,
    ) -> FaultProxy:
        """A proxy from toxiproxy's JSON config, so an existing suite's
        configuration ports unchanged: the ``-config`` file (a list of
        proxies), ``GET /proxies`` output (an object of name -> proxy) or
        one proxy object; text, bytes, a path, or parsed JSON.  ``name``
        picks a proxy when there are several.  ``listen``, ``upstream``,
        ``enabled`` and every toxic (``type``, ``stream``, ``name``,
        ``toxicity``, ``attributes``) are honoured; ``options`` go to the
        constructor (``buffer_size``, ...).

        Example::

            >>> cfg = {"name": "redis", "listen": "127.0.0.1:0",
            ...        "upstream": "127.0.0.1:6379", "enabled": True,
            ...        "toxics": [{"type": "latency", "stream": "downstream",
            ...                    "attributes": {"latency": 50}}]}
            >>> with sk.FaultProxy.from_toxiproxy(cfg) as proxy:
            ...     [h.name for h in proxy.faults]
            ['latency_downstream']
        """
        proxies = _config_proxies(_load_config(config))
        if name is not None:
            chosen = [p for p in proxies if p.get("name") == name]
            if not chosen:
                raise ValueError(f"no proxy named {name!r} in the config; it has "
                                 f"{[p.get('name') for p in proxies]}")
        elif len(proxies) != 1:
            raise ValueError(f"the config has {len(proxies)} proxies "
                             f"{[p.get('name') for p in proxies]}: pass name= to pick one")
        else:
            chosen = proxies
        spec = chosen[0]
        proxy = cls(spec["upstream"], spec.get("listen", "127.0.0.1:0"),
                    name=str(spec.get("name", "")), **options)
        try:
            for tox in spec.get("toxics") or []:
                if not isinstance(tox, dict) or "type" not in tox:
                    raise ValueError(f"a toxiproxy toxic needs a 'type': {tox!r}")
                proxy.add(
                    tox["type"], tox.get("stream", "downstream"),
                    name=tox.get("name"), toxicity=tox.get("toxicity", 1.0),
                    **(tox.get("attributes") or {}),
                )
            if spec.get("enabled", True) is False:
                proxy.disable()
        except BaseException:
            proxy.close()
            raise
        return proxy

    @contextlib.contextmanager
    def fault(
        self,
        fault: Union[str, Fault],
        direction: Direction = "downstream",
        *,
        name: Optional[str] = None,
        toxicity: float = 1.0,
        **params: Any,
    ) -> Iterator[FaultHandle]:
        """Switch a fault on for the duration of a ``with`` block (as
        :meth:`add`).

        Example::

            with proxy.fault("stall"):
                with pytest.raises(sk.Timeout):
                    conn.request(b"x", timeout=0.2)
        """
        handle = self.add(fault, direction, name=name, toxicity=toxicity, **params)
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
