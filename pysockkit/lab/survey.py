"""Every state in turn: :func:`survey` and its printable rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from .._enums import StateLike, TcpState, as_state
from .._display import html_table as _html
from .._display import text_table as _table
from .._errors import Timeout
from .._net import FamilyLike
from ._build import reproduce
from .recipes import _RECIPES_BY_KEY, ALL_STATES, LabUnavailable, ObservedBy

@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of :func:`survey`: a state reproduced (or not) and released.

    ``observed`` and ``elapsed_s`` are ``None`` and ``error`` says why
    when the state could not be reproduced.

    Example::

        >>> o = survey(states=[TcpState.LISTEN], include_on_fd=False)[0]
        >>> o.state.name, o.observed.name, o.observed_by, o.error
        ('LISTEN', 'LISTEN', 'TCP_INFO', None)
    """

    state: TcpState
    on_fd: bool
    how: str
    observed_by: ObservedBy
    observed: Optional[TcpState]
    elapsed_s: Optional[float]
    error: Optional[str] = None

    @property
    def reached(self) -> bool:
        """True if the kernel reported the state (request socket: SYN_RCVD).

        Example::

            >>> Outcome(TcpState.LISTEN, False, "", "TCP_INFO", None, None, "x").reached
            False
        """
        if self.observed is None:
            return False
        return self.observed is self.state or (
            self.state is TcpState.NEW_SYN_RECV and self.observed is TcpState.SYN_RCVD)


class Survey(list[Outcome]):
    """The rows of :func:`survey`, printable as a table.

    Example::

        >>> s = survey(states=[TcpState.CLOSE_WAIT], include_on_fd=False)
        >>> print(s)  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        state       observed    by        reached in  how
        CLOSE_WAIT  CLOSE_WAIT  TCP_INFO  ... ms  the peer does shutdown(SHUT_WR); we never close
        >>> s.all_reached
        True
    """

    __slots__ = ()

    @property
    def all_reached(self) -> bool:
        """True if every row reached its state.

        Example::

            >>> Survey().all_reached
            True
        """
        return all(o.reached for o in self)

    _HEAD = ("state", "observed", "by", "reached in", "how")

    def _rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for o in self:
            name = o.state.name + (" (fd)" if o.on_fd else "")
            if o.observed is None or o.elapsed_s is None:
                rows.append((name, "-", o.observed_by, "-", f"not reproduced: {o.error}"))
            else:
                rows.append((name, o.observed.name, o.observed_by,
                             f"{o.elapsed_s * 1e3:.3f} ms", o.how))
        return rows

    def __str__(self) -> str:
        return _table(self._HEAD, self._rows(), right=frozenset({3}))

    def _repr_html_(self) -> str:
        return _html(self._HEAD, self._rows())


def survey(
    family: FamilyLike = "ipv4",
    *,
    states: Optional[Sequence[StateLike]] = None,
    include_on_fd: bool = True,
    timeout: float = 2.0,
) -> Survey:
    """Reproduce every state in turn (each released before the next) and
    return what happened, as a printable :class:`Survey`.

    *states* defaults to :data:`ALL_STATES`; *include_on_fd* adds the
    SYN_RCVD-on-a-descriptor variant (a row with ``error`` set where
    ``unshare -Urn`` is unavailable).  Errors other than
    :class:`LabUnavailable` and :class:`pysockkit.Timeout` propagate.

    Example::

        >>> import pysockkit as sk
        >>> print(sk.lab.survey())  # doctest: +SKIP
        state         observed      by         reached in  how
        LISTEN        LISTEN        TCP_INFO      0.015 ms  bind() + listen()
        ...
    """
    todo: list[tuple[TcpState, bool]] = [
        (as_state(s), False) for s in (ALL_STATES if states is None else states)]
    if include_on_fd:
        todo.append((TcpState.SYN_RCVD, True))
    out = Survey()
    for st, fd in todo:
        recipe = _RECIPES_BY_KEY[(st, fd)]
        try:
            with reproduce(st, family=family, timeout=timeout, on_fd=fd) as scene:
                out.append(Outcome(st, fd, scene.how, scene.observed_by,
                                   scene.observed, scene.elapsed_s))
        except (LabUnavailable, Timeout) as exc:
            out.append(Outcome(st, fd, recipe.how, recipe.observed_by, None, None,
                               exc.strerror or str(exc)))
    return out
