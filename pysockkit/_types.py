"""Configuration values: frozen, slotted dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Framing"]

_DEFAULT_MAX_FRAME = 16 * 2**20
_HEADER_LIMIT = {1: 2**8 - 1, 2: 2**16 - 1, 4: 2**32 - 1, 8: 2**64 - 1}


@dataclass(frozen=True, slots=True)
class Framing:
    """How frames are delimited on the wire: ``[length][payload]``.

    ``header_size`` is the width of the length field in bytes (1, 2, 4 or 8),
    ``byteorder`` its byte order, ``max_frame`` the largest payload accepted
    or sent.  A peer announcing more than ``max_frame`` gets
    ``sk.FrameTooLarge`` before anything is allocated.  When ``max_frame`` is
    left at its default it is clipped to what the header can carry (255 for
    a 1-byte header, 65535 for 2 bytes).

    Example::

        >>> sk.Framing()                      # Netty/Twisted Int32 style
        Framing(header_size=4, byteorder='big', max_frame=16777216)
        >>> sk.Framing(header_size=2, byteorder="little").max_frame
        65535
    """

    header_size: int = 4
    byteorder: Literal["big", "little"] = "big"
    max_frame: int = _DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        limit = _HEADER_LIMIT.get(self.header_size)
        if limit is None:
            raise ValueError(
                f"header_size must be 1, 2, 4 or 8, not {self.header_size!r}"
            )
        if self.byteorder not in ("big", "little"):
            raise ValueError(
                f"byteorder must be 'big' or 'little', not {self.byteorder!r}"
            )
        if not isinstance(self.max_frame, int) or self.max_frame < 1:
            raise ValueError(f"max_frame must be an int >= 1, not {self.max_frame!r}")
        if self.max_frame > limit:
            if self.max_frame == _DEFAULT_MAX_FRAME:
                object.__setattr__(self, "max_frame", limit)
            else:
                raise ValueError(
                    f"max_frame {self.max_frame} does not fit a "
                    f"{self.header_size}-byte header (at most {limit})"
                )

    def encode(self, payload: bytes) -> bytes:
        """Return ``payload`` as one frame (header + payload), for tests and
        for talking to pysockkit from code that has only a plain socket.

        Example::

            >>> sk.Framing(header_size=2).encode(b"hi")
            b'\\x00\\x02hi'
        """
        if len(payload) > self.max_frame:
            from ._errors import FrameTooLarge

            raise FrameTooLarge(
                f"payload of {len(payload)} bytes exceeds max_frame {self.max_frame}"
            )
        return len(payload).to_bytes(self.header_size, self.byteorder) + bytes(payload)
