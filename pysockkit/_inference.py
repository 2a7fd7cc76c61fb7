"""What a recording says about the states of each end: the RFC 793
transition each segment implies (inferred), merged with what the state
sampler saw (observed), each :class:`StateChange` saying which it is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

from ._capture import Segment, TcpFlags
from ._enums import TcpState

__all__ = ["StateChange", "infer_states", "merge_states"]

Address = tuple[str, int]
Observation = tuple[float, TcpState, str]  # (seconds, state, "TCP_INFO" / "sock_diag")

_MASK = 0xFFFFFFFF


class StateChange(tuple[float, TcpState]):
    """One entry of ``Recording.states[end]``: a ``(time, state)`` pair
    that also says how it is known.

    - ``time``: seconds from the recording's start: when the kernel
      reported it (observed), or when the segment that implies it was
      captured (inferred);
    - ``state``: the :class:`~pysockkit.TcpState`;
    - ``observed``: True if the state sampler saw it, False if it is
      inferred from a segment (RFC 793);
    - ``by``: ``"TCP_INFO"`` or ``"sock_diag"`` when observed; the event
      (``"rcv SYN+ACK, snd ACK"``) when inferred;
    - ``segment``: the index in ``Recording.segments`` of the segment that
      implies it, or None (the initial state, or a state only the sampler
      saw).

    It unpacks and compares as the pair: ``for t, state in rec.states["client"]``.

    Example::

        >>> c = StateChange(0.0012, TcpState.SYN_RCVD, False, "rcv SYN, snd SYN+ACK", 0)
        >>> t, s = c
        >>> s.name, c.observed, c.segment
        ('SYN_RCVD', False, 0)
    """

    observed: bool
    by: str
    segment: Optional[int]

    def __new__(cls, time: float, state: TcpState, observed: bool, by: str,
                segment: Optional[int] = None) -> StateChange:
        self = super().__new__(cls, (float(time), state))
        object.__setattr__(self, "observed", bool(observed))
        object.__setattr__(self, "by", str(by))
        object.__setattr__(self, "segment", segment)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("StateChange is immutable")

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.observed, self.by, self.segment)

    @property
    def time(self) -> float:
        """Seconds from the recording's start.

        Example::

            >>> StateChange(0.5, TcpState.LISTEN, True, "TCP_INFO").time
            0.5
        """
        return self[0]

    @property
    def state(self) -> TcpState:
        """The state.

        Example::

            >>> StateChange(0.5, TcpState.LISTEN, True, "TCP_INFO").state.name
            'LISTEN'
        """
        return self[1]

    def __repr__(self) -> str:
        how = f"observed by {self.by}" if self.observed else f"inferred: {self.by}"
        return f"StateChange({self[0]:.6f}, {self[1].name}, {how})"


# --------------------------------------------------------------------------
# RFC 793: the transition a segment implies, for its sender and receiver


class _End:
    """One end's state machine, driven by the segments it sends and
    receives (raw sequence numbers)."""

    def __init__(self, state: TcpState) -> None:
        self.state = state
        self.fin_end: Optional[int] = None   # ack that covers our FIN
        self.event = ""                      # what the last segment did without a change

    def _to(self, out: list[tuple[TcpState, str]], st: TcpState, why: str) -> None:
        if st is not self.state:
            self.state = st
            out.append((st, why))

    def send(self, seg: Segment) -> list[tuple[TcpState, str]]:
        out: list[tuple[TcpState, str]] = []
        f = seg.flags
        S = TcpState
        if TcpFlags.RST in f:
            if self.state not in (S.CLOSED, S.LISTEN):
                self._to(out, S.CLOSED, "abort: snd RST")
            return out
        if TcpFlags.SYN in f and TcpFlags.ACK not in f and self.state is S.CLOSED:
            self._to(out, S.SYN_SENT, "connect(): snd SYN")
        if TcpFlags.SYN in f and TcpFlags.ACK in f and self.state is S.LISTEN:
            self._to(out, S.SYN_RCVD, "rcv SYN, snd SYN+ACK")
        if TcpFlags.FIN in f:
            self.fin_end = (seg.seq + seg.length + 1 + (1 if TcpFlags.SYN in f else 0)) & _MASK
            if self.state in (S.ESTABLISHED, S.SYN_RCVD):
                self._to(out, S.FIN_WAIT_1, "close(): snd FIN")
            elif self.state is S.CLOSE_WAIT:
                self._to(out, S.LAST_ACK, "close(): snd FIN")
        return out

    def _fin_acked(self, seg: Segment) -> bool:
        if self.fin_end is None or TcpFlags.ACK not in seg.flags:
            return False
        return ((seg.ack - self.fin_end) & _MASK) < 2**31

    def receive(self, seg: Segment) -> list[tuple[TcpState, str]]:
        out: list[tuple[TcpState, str]] = []
        f = seg.flags
        S = TcpState
        if TcpFlags.RST in f:
            if self.state not in (S.CLOSED, S.LISTEN):
                self._to(out, S.CLOSED, "rcv RST")
            return out
        if TcpFlags.SYN in f:
            if TcpFlags.ACK in f:
                if self.state is S.SYN_SENT:
                    self._to(out, S.ESTABLISHED, "rcv SYN+ACK, snd ACK")
            elif self.state is S.LISTEN:
                self._to(out, S.SYN_RCVD, "rcv SYN, snd SYN+ACK")
            elif self.state is S.SYN_SENT:
                self._to(out, S.SYN_RCVD, "rcv SYN (simultaneous open)")
        elif TcpFlags.ACK in f and self.state is S.SYN_RCVD:
            self._to(out, S.ESTABLISHED, "rcv ACK of SYN")
        if self._fin_acked(seg):
            if self.state is S.FIN_WAIT_1:
                self._to(out, S.FIN_WAIT_2, "rcv ACK of FIN")
            elif self.state is S.CLOSING:
                self._to(out, S.TIME_WAIT, "rcv ACK of FIN, wait 2 MSL")
            elif self.state is S.LAST_ACK:
                self._to(out, S.CLOSED, "rcv ACK of FIN")
        if TcpFlags.FIN in f:
            if self.state in (S.ESTABLISHED, S.SYN_RCVD):
                self._to(out, S.CLOSE_WAIT, "rcv FIN, snd ACK")
            elif self.state is S.FIN_WAIT_1:
                self._to(out, S.CLOSING, "rcv FIN (simultaneous close), snd ACK")
            elif self.state is S.FIN_WAIT_2:
                self._to(out, S.TIME_WAIT, "rcv FIN, snd ACK, wait 2 MSL")
            elif self.state is S.TIME_WAIT and not out:
                self.event = "in TIME_WAIT: ACKs it again, the 2 MSL wait starts over"
        return out


def infer_states(segments: Sequence[Segment], indices: Sequence[int], a: Address,
                 b: Address, initial: dict[Address, TcpState],
                 lost: Iterable[int] = (), events: Optional[dict[int, str]] = None,
                 ) -> dict[Address, list[tuple[float, TcpState, str, Optional[int]]]]:
    """The RFC 793 path of both ends *a* and *b* of one connection, from
    its segments (``segments[i]`` for i in *indices*, in order), starting
    from *initial*.  A segment in *lost* was dropped on arrival: only its
    sender acts on it.  Returns ``{address: [(time, state, event,
    segment index or None), ...]}``, the initial state first; *events*, if
    given, receives ``{segment index: text}`` for a segment that matters
    without a change of state (a FIN received again in TIME_WAIT).

    Example::

        >>> from pysockkit._capture import Segment, TcpFlags as F
        >>> A, B = ("127.0.0.1", 40000), ("127.0.0.1", 5000)
        >>> segs = [Segment(0.0, A, B, F.SYN, 100, 0, 0, 0, 65495, 0),
        ...         Segment(0.1, B, A, F.SYN | F.ACK, 700, 101, 0, 1, 65483, 0),
        ...         Segment(0.2, A, B, F.ACK, 101, 701, 1, 1, 512, 0)]
        >>> p = infer_states(segs, [0, 1, 2], A, B,
        ...                  {A: TcpState.CLOSED, B: TcpState.LISTEN})
        >>> [s.name for _, s, _, _ in p[B]]
        ['LISTEN', 'SYN_RCVD', 'ESTABLISHED']
    """
    ends = {a: _End(initial.get(a, TcpState.ESTABLISHED)),
            b: _End(initial.get(b, TcpState.ESTABLISHED))}
    out: dict[Address, list[tuple[float, TcpState, str, Optional[int]]]] = {
        addr: [(0.0, e.state, "initial", None)] for addr, e in ends.items()}
    dropped = set(lost)
    for i in indices:
        seg = segments[i]
        snd, rcv = ends.get(seg.src), ends.get(seg.dst)
        if snd is None or rcv is None:
            continue
        for st, why in snd.send(seg):
            out[seg.src].append((seg.time, st, why, i))
        if i in dropped:
            continue
        rcv.event = ""
        for st, why in rcv.receive(seg):
            out[seg.dst].append((seg.time, st, why, i))
        if rcv.event and events is not None:
            events[i] = rcv.event
    return out


def merge_states(inferred: Sequence[tuple[float, TcpState, str, Optional[int]]],
                 observed: Sequence[Observation]) -> list[StateChange]:
    """Align an end's inferred path with what its sampler observed (a
    longest common subsequence of the two state sequences, in order):
    matched states are observed (the sampler's time, the segment that
    implies them); inferred-only states stay inferred; observed-only
    states are kept, observed, with no segment.

    Example::

        >>> inf = [(0.0, TcpState.CLOSED, "initial", None),
        ...        (0.1, TcpState.SYN_SENT, "connect(): snd SYN", 0),
        ...        (0.2, TcpState.ESTABLISHED, "rcv SYN+ACK, snd ACK", 1)]
        >>> obs = [(0.0, TcpState.CLOSED, "TCP_INFO"), (0.3, TcpState.ESTABLISHED, "TCP_INFO")]
        >>> [(s.state.name, s.observed) for s in merge_states(inf, obs)]
        [('CLOSED', True), ('SYN_SENT', False), ('ESTABLISHED', True)]
    """
    n, m = len(inferred), len(observed)
    lcs = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if inferred[i][1] is observed[j][1]:
                lcs[i][j] = lcs[i + 1][j + 1] + 1
            else:
                lcs[i][j] = max(lcs[i + 1][j], lcs[i][j + 1])
    out: list[StateChange] = []
    gap_inf: list[StateChange] = []
    gap_obs: list[StateChange] = []

    def flush() -> None:
        out.extend(sorted(gap_inf + gap_obs, key=lambda c: c[0]))
        gap_inf.clear()
        gap_obs.clear()

    i = j = 0
    while i < n or j < m:
        if i < n and j < m and inferred[i][1] is observed[j][1]:
            flush()
            t, st, _why, seg = inferred[i]
            out.append(StateChange(observed[j][0], st, True, observed[j][2], seg))
            i += 1
            j += 1
        elif j < m and (i == n or lcs[i][j + 1] >= lcs[i + 1][j]):
            t, st, by = observed[j]
            gap_obs.append(StateChange(t, st, True, by, None))
            j += 1
        else:
            t, st, why, seg = inferred[i]
            gap_inf.append(StateChange(t, st, False, why, seg))
            i += 1
    flush()
    return out
