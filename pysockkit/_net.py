"""Addresses and timeouts: the one validator and the one printer for each.

Every public entry point (sync, aio, simplex, FaultProxy, the testing
helpers, the command line) passes what the user gave through
:func:`parse_address` and :func:`check_timeout`, so that a mistake gets the
same clear error everywhere and nothing is ever misparsed, and every
address a user reads is printed by :func:`format_address`.

Accepted addresses (``AddressLike``):

* ``(host, port)``: ``host`` a str (a name, an IPv4 or IPv6 literal, or
  ``""`` for every interface), ``port`` an int in 0..65535;
* ``(host, port, flowinfo, scope_id)``: the stdlib's IPv6 form (scope_id 0:
  link-local addresses with a scope are not supported);
* ``"host:port"`` and ``"[v6-literal]:port"`` strings.

Timeouts: ``None`` waits forever (Ctrl-C still interrupts), ``0`` does not
wait (one try), a positive number of seconds waits that long; negative or
NaN is a ValueError, anything that is not a number a TypeError.  The C
core checks the timeouts of its own calls (``skpy_deadline``) with the same
rule and the same message, so the hot paths pay nothing here.

Example::

    >>> parse_address("[::1]:9000")
    ('::1', 9000)
    >>> format_address(("::1", 9000))
    '[::1]:9000'
    >>> check_timeout(-1)
    Traceback (most recent call last):
    ValueError: timeout must be None (wait forever) or a number of seconds >= 0, not -1
"""

from __future__ import annotations

import errno
import functools
import math
import numbers
import operator
import socket
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal, Optional, overload
else:
    from ._notyping import overload

from ._errors import Error

__all__ = [
    "Address",
    "AddressLike",
    "parse_address",
    "format_address",
    "check_timeout",
    "resolve",
    "parse_family",
    "loopback_host",
    "FamilyLike",
]

Address = tuple[str, int]
"""A parsed address: ``(host, port)``, as every ``.address`` returns it.

Example::

    host, port = srv.address        # ('127.0.0.1', 40123)
"""

AddressLike = tuple[str, int] | tuple[str, int, int, int] | str
"""What an argument that takes an address accepts: ``(host, port)``, the
stdlib's IPv6 ``(host, port, flowinfo, scope_id)``, ``"host:port"`` or
``"[v6]:port"``.

Example::

    def ping(addr: sk.AddressLike) -> bytes:
        return sk.call(addr, b"ping", timeout=2.0)

    ping("[::1]:9000"); ping(("127.0.0.1", 9000))
"""

FORMS = "a (host, port) tuple or a 'host:port' string ('[v6]:port' for IPv6)"
"""The accepted forms, as every address error names them."""

# C: sk_deadline_after() treats anything longer as forever too (and
# threading/asyncio waits overflow on float("inf")).
_FOREVER = 9.0e9


def _port(value: Any, name: str, text: Any, from_text: bool = False) -> int:
    if from_text:
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"{name}: port {value!r} in {text!r} is not a number; "
                             f"expected {FORMS}")
        port = int(value)
    else:
        if isinstance(value, bool):
            raise TypeError(f"{name}: port must be an int, not bool; expected {FORMS}")
        try:
            port = operator.index(value)
        except TypeError:
            raise TypeError(f"{name}: port must be an int, not {type(value).__name__}; "
                            f"expected {FORMS}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name}: port {port} is out of range 0..65535")
    return port


def _host(host: str, name: str, value: Any) -> str:
    if "%" in host:
        raise ValueError(f"{name}: {value!r}: IPv6 scope ids ('%zone') are not supported; "
                         "use a global or loopback address")
    # every white space but " " is unprintable, so a printable host without
    # " " has none (the generator runs only for the rare other hosts)
    if (" " in host or not host.isprintable()) and any(c.isspace() for c in host):
        raise ValueError(f"{name}: host {host!r} contains white space; expected {FORMS}")
    return host


def _split(text: str, name: str, default_host: Optional[str]) -> Address:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{name}: {text!r} is not '[v6]:port'; expected {FORMS}")
        port = rest[1:]
        if ":" not in host:
            raise ValueError(f"{name}: {text!r}: only an IPv6 address goes in brackets; "
                             f"expected {FORMS}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            what = "is only a port" if text.isdigit() else "has no port"
            raise ValueError(f"{name}: {text!r} {what}; expected {FORMS}")
        if ":" in host:
            raise ValueError(f"{name}: {text!r} is ambiguous: write an IPv6 address in "
                             f"brackets, as in '[{host}]:{port}'")
    if not host:
        if default_host is None:
            raise ValueError(f"{name}: {text!r} has no host; expected {FORMS}")
        host = default_host
    return _host(host, name, text), _port(port, name, text, from_text=True)


def parse_address(value: Any, *, name: str = "addr",
                  default_host: Optional[str] = None) -> Address:
    """Check a user-given address and return it as ``(host, port)``.

    Raises TypeError for a value of the wrong type and ValueError for a
    malformed one, both naming the argument ``name`` and the accepted
    forms.  ``default_host`` fills in a string's empty host (``":9000"``);
    without it such a string is refused.

    Example::

        >>> parse_address(("127.0.0.1", 9000))
        ('127.0.0.1', 9000)
        >>> parse_address("localhost:abc")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: addr: port 'abc' in 'localhost:abc' is not a number; expected ...
    """
    if isinstance(value, str):
        return _split(value.strip(), name, default_host)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be {FORMS}, not {type(value).__name__} "
                        "(decode it first)")
    if not isinstance(value, Sequence):
        raise TypeError(f"{name} must be {FORMS}, not {type(value).__name__}")
    if len(value) not in (2, 4):
        raise ValueError(f"{name}: {value!r} has {len(value)} item(s); expected {FORMS}")
    host = value[0]
    if not isinstance(host, str):
        raise TypeError(f"{name}: host must be a str, not {type(host).__name__}; "
                        f"expected {FORMS}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if len(value) == 4:
        for what, v in (("flowinfo", value[2]), ("scope_id", value[3])):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: {what} must be an int, not {type(v).__name__}; "
                                f"expected {FORMS}")
        if value[3] != 0:
            raise ValueError(f"{name}: {value!r}: IPv6 scope ids are not supported; "
                             "use a global or loopback address")
    return _host(host, name, value), _port(value[1], name, value)


def format_address(addr: Sequence[Any]) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:9000``): the
    one way pysockkit prints an address (reprs, errors, the CLI).

    Example::

        >>> format_address(("127.0.0.1", 80)), format_address(("::1", 80))
        ('127.0.0.1:80', '[::1]:80')
    """
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@overload
def check_timeout(value: Any, name: str = ..., *, allow_none: Literal[False]) -> float: ...


@overload
def check_timeout(value: Any, name: str = ..., *, allow_none: bool = ...) -> Optional[float]: ...


def check_timeout(value: Any, name: str = "timeout", *,
                  allow_none: bool = True) -> Optional[float]:
    """Check a timeout and return it as None (forever) or a float.

    ``None`` waits forever (refused when ``allow_none`` is false, for a
    duration that must end), ``0`` does not wait, a positive number of
    seconds waits that long (more than ~285 years, ``inf`` included, is
    forever).  Negative or NaN is a ValueError, anything else a TypeError;
    both name the argument ``name``.

    Example::

        >>> check_timeout(None), check_timeout(2), check_timeout(float("inf"))
        (None, 2.0, None)
    """
    forms = "None (wait forever) or a number of seconds" if allow_none else "a number of seconds"
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be {forms} >= 0, not None")
    # int and float first: the numbers.Real check goes through the ABC
    # machinery (~1 us, and short connections check a timeout or two each)
    if type(value) is not float and type(value) is not int and (
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be {forms} >= 0, not {type(value).__name__}")
    t = float(value)
    if math.isnan(t) or t < 0:
        raise ValueError(f"{name} must be {forms} >= 0, not {value!r}")
    if t > _FOREVER:
        return None if allow_none else _FOREVER
    return t


# ------------------------------------------------------------- resolving


@functools.lru_cache(maxsize=256)
def _numeric(host: str) -> Optional[int]:
    """The address family of a numeric host, or None for a name (cached:
    short connections call this for every connection)."""
    if host == "":
        return socket.AF_INET
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
            return int(fam)
        except OSError:
            pass
    return None


@functools.lru_cache(maxsize=256)
def _resolve_pair(host: str, port: int, name: str) -> Optional[tuple[int, str, int]]:
    """``(family, host, port)`` for a checked (host, port) whose host is
    numeric, None for a name (which :func:`resolve` looks up each time)."""
    host, port = parse_address((host, port), name=name)
    fam = _numeric(host)
    return None if fam is None else (fam, host, port)


def resolve(addr: Any, name: str = "addr") -> list[tuple[int, str, int]]:
    """``[(family, numeric host, port)]`` for a user-given address (checked
    by :func:`parse_address`, errors naming the argument *name*); a numeric
    host costs no syscall, a name goes through getaddrinfo (IPv4 and IPv6
    results only, in its order).  ``sk.Error`` when the name does not resolve.

    Example::

        >>> resolve(("127.0.0.1", 80)), resolve("[::1]:80")
        ([(2, '127.0.0.1', 80)], [(10, '::1', 80)])
    """
    if type(addr) is tuple and len(addr) == 2 and type(addr[0]) is str \
            and type(addr[1]) is int:
        # the common case, (numeric host, port), cached: its checks and
        # inet_pton cost ~10,000 instructions, paid by every short connection
        # (a name or a bad value is not cached: lru_cache keeps no exception)
        found = _resolve_pair(addr[0], addr[1], name)
        if found is not None:
            return [found]
    host, port = parse_address(addr, name=name)
    fam = _numeric(host)
    if fam is not None:
        return [(fam, host, port)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Error(exc.errno, f"getaddrinfo({host!r}): {exc.strerror}; "
                    "check the host name") from exc
    out = []
    for family, _t, _p, _c, sa in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            out.append((int(family), str(sa[0]), int(sa[1])))
    if not out:
        raise Error(errno.EAFNOSUPPORT, f"getaddrinfo({host!r}): no IPv4 or IPv6 address; "
                    "check the host name")
    return out


FamilyLike = str | int | socket.AddressFamily
"""What an argument that names an address family accepts (see
:func:`parse_family`).  Example: ``sk.lab.reproduce("LISTEN", family="ipv6")``."""

_FAMILY_NAMES = {"ipv4": socket.AF_INET, "inet": socket.AF_INET, "af_inet": socket.AF_INET,
                 "4": socket.AF_INET, "ipv6": socket.AF_INET6, "inet6": socket.AF_INET6,
                 "af_inet6": socket.AF_INET6, "6": socket.AF_INET6}
_FAMILY_NUMBERS = {4: socket.AF_INET, 6: socket.AF_INET6,
                   int(socket.AF_INET): socket.AF_INET, int(socket.AF_INET6): socket.AF_INET6}


def parse_family(family: FamilyLike, name: str = "family") -> socket.AddressFamily:
    """The address family a user named: ``socket.AF_INET``/``AF_INET6``,
    ``4``/``6``, or ``"ipv4"``/``"ipv6"`` (also ``"inet"``, ``"inet6"``,
    ``"af_inet"``, ``"af_inet6"``, ``"4"``, ``"6"``, any case).  ValueError
    (naming the argument *name*) for anything else.

    Example::

        >>> parse_family("IPv6"), parse_family(4)
        (<AddressFamily.AF_INET6: 10>, <AddressFamily.AF_INET: 2>)
    """
    fam: Optional[socket.AddressFamily] = None
    if isinstance(family, str):
        fam = _FAMILY_NAMES.get(family.lower())
    elif not isinstance(family, bool):
        try:
            fam = _FAMILY_NUMBERS.get(operator.index(family))
        except TypeError:
            pass
    if fam is None:
        raise ValueError(f"{name} must be socket.AF_INET or socket.AF_INET6 (or 4, 6, "
                         f"'ipv4', 'ipv6'), not {family!r}")
    return fam


def loopback_host(family: int) -> str:
    """The loopback address of an address family: ``"::1"`` for AF_INET6,
    ``"127.0.0.1"`` otherwise.

    Example::

        >>> loopback_host(socket.AF_INET6)
        '::1'
    """
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"
