"""Addresses and timeouts: the one validator and the one printer for each.

Every public entry point (sync, aio, simplex, FaultProxy, the testing
helpers, the command line) passes what the user gave through
:func:`parse_address` and :func:`check_timeout`, so that a mistake gets the
same clear error everywhere and nothing is ever misparsed, and every
address a user reads is printed by :func:`format_address`.

Accepted addresses:

* ``(host, port)``: ``host`` a str (a name, an IPv4 or IPv6 literal, or
  ``""`` for every interface), ``port`` an int in 0..65535;
* ``(host, port, flowinfo, scope_id)``: the stdlib's IPv6 form;
* ``"host:port"`` and ``"[v6-literal]:port"`` strings.

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

import math
import numbers
from collections.abc import Sequence
from typing import Any, Optional, Union

__all__ = ["Address", "AddressLike", "parse_address", "format_address", "check_timeout"]

Address = tuple[str, int]
AddressLike = Union[tuple[str, int], tuple[str, int, int, int], str]

_FORMS = "a (host, port) tuple or a 'host:port' / '[v6]:port' string"


def _port(value: Any, name: str, text: Any, from_text: bool = False) -> int:
    if from_text:
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"{name}: port {value!r} in {text!r} is not a number "
                             f"(expected {_FORMS})")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: port must be an int, not {type(value).__name__} "
                        f"(expected {_FORMS})")
    if not 0 <= value <= 65535:
        raise ValueError(f"{name}: port {value} is out of range 0..65535")
    return int(value)


def _split(text: str, name: str, default_host: Optional[str]) -> Address:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{name}: {text!r} is not '[v6]:port' (expected {_FORMS})")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{name}: {text!r} has no port (expected {_FORMS})")
        if ":" in host:
            raise ValueError(f"{name}: {text!r} is ambiguous: write an IPv6 address in "
                             f"brackets, as in '[{host}]:{port}'")
    if not host:
        if default_host is None:
            raise ValueError(f"{name}: {text!r} has no host (expected {_FORMS})")
        host = default_host
    return host, _port(port, name, text, from_text=True)


def parse_address(value: Any, *, name: str = "addr",
                  default_host: Optional[str] = None) -> Address:
    """Check a user-given address and return it as ``(host, port)``.

    Raises TypeError for a value of the wrong type and ValueError for a
    malformed one, both naming the argument ``name`` and the accepted
    forms.  ``default_host`` fills in a string's empty host (``":9000"``).

    Example::

        >>> parse_address(("127.0.0.1", 9000))
        ('127.0.0.1', 9000)
        >>> parse_address("localhost:abc")
        Traceback (most recent call last):
        ValueError: addr: port 'abc' in 'localhost:abc' is not a number (expected ...)
    """
    if isinstance(value, str):
        return _split(value.strip(), name, default_host)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)) \
            and len(value) in (2, 4):
        host = value[0]
        if not isinstance(host, str):
            raise TypeError(f"{name}: host must be a str, not {type(host).__name__} "
                            f"(expected {_FORMS})")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return host, _port(value[1], name, value)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{name}: {value!r} has {len(value)} items; expected {_FORMS}")
    raise TypeError(f"{name} must be {_FORMS}, not {type(value).__name__}")


def format_address(addr: Sequence[Any]) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:9000``).

    Example::

        >>> format_address(("127.0.0.1", 80)), format_address(("::1", 80))
        ('127.0.0.1:80', '[::1]:80')
    """
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_timeout(value: Any, name: str = "timeout") -> Optional[float]:
    """Check a timeout: None waits forever, 0 does not wait, a positive
    number of seconds waits that long; negative or NaN is a ValueError and
    anything else a TypeError.  Returns None or a float.

    Example::

        >>> check_timeout(None), check_timeout(2)
        (None, 2.0)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be None or a number of seconds, "
                        f"not {type(value).__name__}")
    t = float(value)
    if math.isnan(t) or t < 0:
        raise ValueError(f"{name} must be None (wait forever) or a number of seconds >= 0, "
                         f"not {value!r}")
    return t
