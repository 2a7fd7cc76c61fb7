"""The type variable of the generic connection classes.

Its own module, imported at run time only by the modules that subclass
``typing.Generic`` (aio): the eager path (``import pysockkit``) refers to
it for type checkers only and so never imports typing (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    # what a connection's recv returns; a bare Framing/Connection means Any
    M = TypeVar("M", covariant=True, default=Any)
else:
    from typing import TypeVar

    M = TypeVar("M", covariant=True)

__all__ = ["M"]
