"""Run-time stand-ins for ``typing.Generic`` and ``typing.overload``.

``import pysockkit`` must not import typing (which loads re, contextlib and
more before Python 3.13; issue 12 item 4, tests/test_layout.py).  The eager
modules import the real names under ``if TYPE_CHECKING:`` (type checkers
see only those) and these at run time::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import Generic, overload
    else:
        from ._notyping import Generic, overload
"""

from __future__ import annotations

from types import GenericAlias

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["Generic", "overload"]


class Generic:
    """A base whose subclasses can be subscripted: ``Generic[M]`` is this
    base itself, ``Framing[bytes]`` a ``types.GenericAlias`` (as
    ``list[int]``)."""

    __slots__ = ()

    def __class_getitem__(cls, params: object) -> object:
        return cls if cls is Generic else GenericAlias(cls, params)


def overload(func: _F) -> _F:
    """``typing.overload`` for type checkers; at run time the last,
    undecorated definition replaces the overloads."""
    return func
