# Type stubs for the C extension pysockkit._core (csrc/binding/*.c).
import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any, Optional, TypeVar, Union

_Buffer = Union[bytes, bytearray, memoryview]
_Timeout = Optional[float]
_C = TypeVar("_C", bound="Connection")

class Connection:
    def __init__(
        self,
        fd: int,
        header_size: int = 4,
        byteorder: str = "big",
        max_frame: int = 16777216,
        control: bool = False,
        correlation: bool = False,
    ) -> None: ...
    @classmethod
    def _adopt(cls: type[_C], fd: int, framing: Any, /) -> _C: ...
    def _start_heartbeat(self, interval: float, timeout: float, initiator: bool, /) -> None: ...
    def _start_worker(self, dispatch: Any, /) -> None: ...
    def _stop_worker(self) -> None: ...
    # threaded duplex (pysockkit._duplex): queue a request, get its future
    def _request_async(self, data: _Buffer, timeout: _Timeout = None) -> concurrent.futures.Future[bytes]: ...
    def _fail_requests(self, exc: BaseException, /) -> None: ...
    # replies, unknown, late, timeouts, pending
    def _request_stats(self) -> dict[str, int]: ...
    def _skip_ids(self, next_id: int, /) -> None: ...
    def _query(self, what: str, /) -> Any: ...
    @property
    def _worker_running(self) -> bool: ...
    @property
    def latency(self) -> Optional[float]: ...
    @property
    def heartbeat_stats(self) -> dict[str, Any]: ...
    def send(self, data: _Buffer, timeout: _Timeout = None, id: Optional[int] = None) -> None: ...
    def send_many(self, frames: Iterable[Union[_Buffer, tuple[int, _Buffer]]], timeout: _Timeout = None) -> int: ...
    def flush(self, timeout: _Timeout = None) -> None: ...
    # bytes for plain frames; (id, bytes) for correlated frames (Framing(correlation=True))
    def recv(self, timeout: _Timeout = None) -> Any: ...
    def recv_many(self, max_frames: Optional[int] = 4096, timeout: _Timeout = None) -> list[Any]: ...
    def request(self, data: _Buffer, timeout: _Timeout = None) -> bytes: ...
    def _shutdown(self, how: int, timeout: _Timeout = None) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def fileno(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def pending_replies(self) -> int: ...
    @property
    def late_replies_dropped(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    @property
    def unsent(self) -> int: ...
    write_behind: bool

# The C half of pysockkit._duplex.Future (a concurrent.futures.Future).
class Future(concurrent.futures.Future[bytes]):
    def __init__(self) -> None: ...

def set_future_class(cls: type, /) -> None: ...

class Decoder:
    def __init__(
        self,
        header_size: int = 4,
        byteorder: str = "big",
        max_frame: int = 16777216,
        control: bool = False,
        correlation: bool = False,
    ) -> None: ...
    def feed(self, data: _Buffer) -> list[Any]: ...
    def take_control(self) -> list[bytes]: ...
    def finish(self) -> None: ...
    @property
    def buffered(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def frames(self) -> int: ...

class Encoder:
    def __init__(
        self,
        header_size: int = 4,
        byteorder: str = "big",
        max_frame: int = 16777216,
        control: bool = False,
        correlation: bool = False,
    ) -> None: ...
    def encode(self, payload: _Buffer, id: Optional[int] = None) -> bytes: ...
    def encode_many(self, payloads: Iterable[bytes]) -> bytes: ...
    def control(self, type: int, ts: int, rtt_ns: int = -1, /) -> bytes: ...

def listen(host: str, port: int, family: Optional[int] = None, backlog: Optional[int] = 128) -> int: ...
def connect(host: str, port: int, family: Optional[int] = None, timeout: _Timeout = None) -> int: ...
def call(host: str, port: int, family: Optional[int], data: _Buffer, timeout: _Timeout,
         framing: Any, /) -> bytes: ...
def exchange(fd: int, data: _Buffer, timeout: _Timeout, framing: Any, /) -> bytes: ...

class Acceptor:
    def __init__(self, fd: int, /) -> None: ...
    def accept(self, timeout: _Timeout = None) -> int: ...
    def close(self) -> None: ...

def sockname(fd: int) -> tuple[str, int]: ...
def peername(fd: int) -> tuple[str, int]: ...
def close_fd(fd: int) -> None: ...
def shutdown_fd(fd: int) -> None: ...
def set_keepalive(fd: int, idle: int, interval: int, count: int, user_timeout_ms: int, /) -> None: ...
def hub_stats() -> Optional[dict[str, Any]]: ...
def stop_workers(timeout: float, /) -> int: ...
def tcp_state(fd: Any, /) -> int: ...
def tcp_info(fd: Any, /) -> dict[str, int]: ...
def tcp_state_name(state: int, /) -> str: ...
def tcp_info_fields() -> tuple[str, ...]: ...
# correlation id bits (csrc/core/frame.h): a reply's id is the request id | ID_REPLY,
# an error reply's also has ID_ERROR; request ids are 1 .. ID_MASK
ID_REPLY: int
ID_ERROR: int
ID_MASK: int
# wire constants (csrc/core/frame.h, heartbeat.h), defined there only:
# the size of a correlated frame's id, the longest control payload, the
# control types and their payload sizes, the "round trip unknown" value a
# PING carries, and how many intervals apart round-trip samples are taken
ID_LEN: int
CONTROL_MAX: int
CTL_PING: int
CTL_PONG: int
CTL_PING_LEN: int
CTL_PONG_LEN: int
CTL_RTT_UNKNOWN: int
HB_RTT_EVERY: int
def framing_limit(header_size: int, control: bool = False, correlation: bool = False) -> int: ...
# the heartbeat rule (csrc/core/heartbeat.c sk_hb_tick); tick() returns
# (HB_* action bits, when to call again in seconds: inf once dead)
HB_CHECK: int
HB_ALIVE: int
HB_DEAD: int
HB_PONG: int
HB_PING: int
class HeartbeatRule:
    """The heartbeat rule of the C core (csrc/core/heartbeat.c sk_hb_tick,
    the one the hub thread applies to threaded connections) for a driver
    that keeps its own clocks (seconds on any monotonic clock, e.g.
    loop.time()).  initiator: this side connected (PINGs after interval;
    the accepting side after 1.5 x interval).

    Example::

        rule = _core.HeartbeatRule(1.0, 3.0, initiator=True)
        actions, due = rule.tick(now, last_rx, last_tx, rtt_at)
        if actions & _core.HB_PING: ...   # send a PING, then tick again
    """
    def __init__(self, interval: float, timeout: float, initiator: bool) -> None: ...
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def ping_after(self) -> float:
        """Seconds without sending that call for a PING."""
    def first_rtt_at(self, now: float, /) -> float:
        """rtt_at of a connection that starts at now (first round-trip
        sample due one interval later)."""
    def tick(
        self, now: float, last_rx: float, last_tx: float, rtt_at: float,
        pong_owed: bool = False, rx_done: bool = False, dead: bool = False, unread: int = -1,
    ) -> tuple[int, float]:
        """(HB_* action bits, when to call again: math.inf once dead).
        HB_CHECK: the peer is overdue and unread is not known (-1): read what
        arrived, call again with unread = FIONREAD; HB_ALIVE: the kernel holds
        unread bytes (set last_rx = now); HB_DEAD; HB_PONG / HB_PING: send
        one.  rx_done: the peer ended its stream (its silence proves
        nothing).  After a PING or ALIVE, call again for the next due time."""
# the correlation book (csrc/core/corr.c, the table of the threaded duplex):
# what settle()/settle_next() say a reply is
CORR_NONE: int
CORR_DELIVER: int
CORR_LATE: int
CORR_DUPLICATE: int
CORR_STRAY: int
EXPIRED_KEEP: int
class CorrelationBook:
    """The correlation book of the C core, the same rules as the threaded
    duplex: request ids, deadlines, the memory of expired requests, so that
    a reply is never handed to another request and a request settles once.
    It keeps ids only (the caller maps them to its futures); times are
    seconds on the caller's monotonic clock (loop.time()).  in_order: plain
    framing, the n-th reply answers the n-th request.

    Example::

        book = _core.CorrelationBook()
        rid = book.register(loop.time() + 2.0)      # frame it with rid
        if book.settle(reply_id) == _core.CORR_DELIVER:
            futures.pop(reply_id & _core.ID_MASK).set_result(payload)
        for rid, out_of_step in book.expire(loop.time()):
            futures.pop(rid).set_exception(sk.Timeout(...))
    """
    def __init__(self, in_order: bool = False) -> None: ...
    def register(self, deadline: Optional[float] = None) -> int:
        """The next request id (1, 2, 3, ...), pending until settled, expired
        or forgotten; deadline None: never expires.  In-order books: call in
        the order the requests go on the wire."""
    def add(self, future: Any, /) -> int:
        """register() with no deadline, and futures[id] = future (one call:
        the hot path of a pipelined client); the caller pops what settles."""
    def settle(self, reply_id: int, /) -> int:
        """Correlated books: a reply with reply_id as on the wire (ID_REPLY /
        ID_ERROR bits allowed).  CORR_DELIVER (its request was pending and is
        settled now), CORR_LATE (it timed out or was forgotten), CORR_DUPLICATE
        (answered already) or CORR_STRAY (never issued); all but DELIVER are
        dropped and counted.  ValueError on an in-order book."""
    def settle_next(self) -> tuple[int, int]:
        """In-order books: a frame arrived.  (CORR_NONE, 0): no reply is owed,
        the frame is a message; else (CORR_DELIVER, id) or (CORR_LATE, id)
        for the oldest unanswered request (CORR_DUPLICATE once the memory of
        that expired id is lost).  ValueError on a correlated book."""
    def expire(self, now: float, /) -> list[tuple[int, bool]]:
        """Take out every pending request with deadline <= now, earliest
        first, as (id, out_of_step); its reply will be dropped as late.
        out_of_step (in-order books): a late reply was dropped since it was
        registered (raise sk.OutOfStep, not sk.Timeout)."""
    def next_deadline(self) -> Optional[float]:
        """The earliest deadline of a pending request, or None."""
    def forget(self, request_id: int, /) -> bool:
        """The caller gave up (cancelled): taken out and remembered, so its
        reply is dropped as late.  False if it was not pending."""
    def unsend(self, request_id: int, /) -> bool:
        """It could not be sent at all: taken out, not remembered; in an
        in-order book the last registered id is given back."""
    def is_pending(self, request_id: int, /) -> bool: ...
    def is_expired(self, request_id: int, /) -> bool:
        """Timed out or forgotten, and still remembered (the last
        EXPIRED_KEEP): its reply would be CORR_LATE."""
    @property
    def pending(self) -> int: ...
    @property
    def issued(self) -> int:
        """Requests registered (register() and add()) and not unsent."""
    @property
    def futures(self) -> dict[int, Any]:
        """The dict id -> future that add() writes."""
    @property
    def owed(self) -> int:
        """In-order books: replies still to come (pending, or timed out /
        forgotten and not answered yet); 0 for correlated books."""
    @property
    def in_order(self) -> bool: ...
    @property
    def next_id(self) -> int:
        """The id the next request gets; correlated books: setting it raises
        it (never lowers it), so that a reconnected connection never reuses
        an id."""
    @next_id.setter
    def next_id(self, value: int) -> None: ...
    @property
    def stats(self) -> dict[str, int]:
        """replies, remote_errors, timeouts, late, duplicate, unknown."""
TCP_INFO_SIZE: int
DIAG_ALL_STATES: int
DIAG_TCPF_BOUND_INACTIVE: int
DIAG_ENTRY_FIELDS: tuple[str, ...]
# (family, state, src, sport, dst, dport, inode, uid, timer, expires_ms,
#  retrans, rqueue, wqueue, cookie, ifindex, info)
_DiagEntry = tuple[int, int, str, int, str, int, int, int, int, int, int, int, int, int, int,
                   Optional[dict[str, int]]]
def diag_dump(
    states: int = 0x1FFE, family: int = 0, sport: int = -1, dport: int = -1, port: int = -1,
    src: Optional[str] = None, dst: Optional[str] = None, addr: Optional[str] = None,
    with_info: bool = False, bound_inactive: bool = False, limit: int = 0,
    timeout: Optional[float] = 30.0, build: bool = False,
) -> list[Any]: ...
def diag_set_entry_type(
    cls: type, fields: tuple[str, ...], states: tuple[Any, ...], families: dict[int, Any],
    timers: tuple[str, ...], /,
) -> None: ...
def diag_lookup(
    family: int, src: str, sport: int, dst: str, dport: int, cookie: Optional[int] = None,
    with_info: bool = False, timeout: Optional[float] = 5.0,
) -> Optional[_DiagEntry]: ...
def diag_timer_name(timer: int, /) -> str: ...
def resolve_replies(
    frames: list[Any], pending: dict[int, Any], timers: dict[int, Any],
    book: Optional[CorrelationBook] = None, /,
) -> tuple[list[Any], int, int]: ...
def resolve_in_order(
    frames: list[Any], pending: dict[int, Any], timers: dict[int, Any], first: int, count: int, /,
) -> tuple[list[Any], int, int]: ...

# the server reactor behind sk.serve (csrc/server.h, csrc/_pysockkit_server.c)
END_CLIENT: int
END_STOPPED: int
END_REJECTED: int
END_FAILED: int
ACCEPTED: int
# why handle_batch left a message to its caller (the last item of a _Rest)
REST_STRAY: int
REST_RAISED: int
REST_ODD: int

# a message handle_batch leaves to the caller: (client id, ticket, id, outcome, why)
_Rest = tuple[int, int, Optional[int], Any, int]
_Event = tuple[int, int, Optional[BaseException], Optional[tuple[str, int]]]

class Server:
    def __init__(self, listen_fd: int, header_size: int, byteorder: str, max_frame: int,
                 correlation: bool, read_timeout: float = 0.0, write_timeout: float = 0.0,
                 max_connections: int = 0, hb_interval: float = 0.0, hb_timeout: float = 0.0,
                 out_cap: int = 0,
                 keepalive: Optional[tuple[int, int, int, int]] = None,
                 inline: bool = False) -> None: ...
    def handle_batch(self, handler: Callable[[bytes], Any], max_frame: int,
                     on_events: Callable[[list[_Event]], list[_Event]],
                     timeout: Optional[float] = None, /
                     ) -> Optional[tuple[int, list[_Rest], list[_Event]]]: ...
    def reply_batch(self, answers: list[tuple[int, int, Optional[int], Any]], /) -> None: ...
    def forget(self, client_ids: list[int], /) -> None: ...
    def peer(self, client_id: int, /) -> Optional[tuple[str, int]]: ...
    def ports(self) -> list[int]: ...
    def stats(self) -> dict[str, int]: ...
    def stop(self) -> None: ...

# the packet delay line behind testing.Link (csrc/testkit/nfq.h, csrc/binding/nfq.c)
NFQ_MAX_LIMIT: int

class NfQueue:
    def __init__(self, queue_num: int, limit: int, seed: int = 0) -> None: ...
    def set(self, delay_ns: int, jitter_ns: int, reorder_ppm: int, limit: int, /) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
