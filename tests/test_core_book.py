"""The correlation book as _core exports it (csrc/binding/corr.c over
csrc/core/corr.c, the table the threaded duplex uses): pysockkit.aio and
pysockkit.simplex ask ``_core.CorrelationBook`` instead of carrying their
own copy of the reply rules (deliver, late, duplicate, stray, expiry)."""

from __future__ import annotations

import math

import pytest

import pysockkit as sk
from pysockkit import _core
from helpers import scaled, wait_until

REPLY, ERROR = _core.ID_REPLY, _core.ID_ERROR
DELIVER, LATE = _core.CORR_DELIVER, _core.CORR_LATE
DUPLICATE, STRAY, NONE = _core.CORR_DUPLICATE, _core.CORR_STRAY, _core.CORR_NONE
T = scaled(5.0)


def test_each_reply_is_delivered_once_and_the_rest_is_counted() -> None:
    book = _core.CorrelationBook()
    assert not book.in_order and book.owed == 0
    a, b, c = book.register(), book.register(), book.register(deadline=10.0)
    assert (a, b, c) == (1, 2, 3) and book.pending == 3
    assert book.is_pending(b) and not book.is_expired(b)
    assert book.settle(b | REPLY) == DELIVER          # out of order is fine
    assert book.settle(b | REPLY) == DUPLICATE        # answered already
    assert book.settle(99 | REPLY) == STRAY           # never issued
    assert book.settle(0) == STRAY
    assert book.settle(a | REPLY | ERROR) == DELIVER  # an error reply
    assert book.forget(c) and not book.forget(c)      # the caller gave up
    assert book.is_expired(c) and book.settle(c | REPLY) == LATE
    assert book.pending == 0 and book.next_deadline() is None
    assert book.stats == {"replies": 2, "remote_errors": 1, "timeouts": 0,
                          "late": 1, "duplicate": 1, "unknown": 2}


def test_add_keeps_the_future_and_issued_counts_what_went_out() -> None:
    book = _core.CorrelationBook()
    futs = [object(), object(), object()]
    ids = [book.add(f) for f in futs]
    assert ids == [1, 2, 3] and book.pending == 3
    assert book.futures == dict(zip(ids, futs))
    assert book.futures is book.futures                # one dict, the caller pops from it
    rid = book.register(deadline=5.0)                  # register() counts too
    assert book.issued == 4 and rid not in book.futures
    assert book.unsend(rid) and book.issued == 3       # never sent: not a request
    assert not book.unsend(rid) and book.issued == 3   # once
    assert book.forget(ids[0]) and book.issued == 3    # cancelled: it was issued
    assert book.settle(ids[1] | REPLY) == DELIVER and book.issued == 3
    # the book writes futures in add() only: settling leaves popping to the caller
    assert set(book.futures) == set(ids)
    with pytest.raises(TypeError):
        book.add()  # type: ignore[call-arg]


def test_an_in_order_book_gives_an_added_and_unsent_id_back() -> None:
    book = _core.CorrelationBook(in_order=True)
    a = book.add("first")
    b = book.add("second")
    assert book.unsend(b) and book.issued == 1
    assert book.add("again") == b                      # the id is given back
    assert book.futures == {a: "first", b: "again"}


def test_a_book_in_a_cycle_through_its_futures_is_collected() -> None:
    import gc
    import types
    import weakref

    class Node(types.SimpleNamespace):  # weakly referable
        pass

    # owner -> book -> futures -> fut -> owner: the cycle of an aio
    # connection whose pending future's callback leads back to it
    owner = Node(book=_core.CorrelationBook())
    fut = Node(owner=owner)
    owner.book.add(fut)
    owner_gone, fut_gone = weakref.ref(owner), weakref.ref(fut)
    del owner, fut
    gc.collect()
    assert owner_gone() is None and fut_gone() is None


def test_requests_expire_in_deadline_order_and_their_replies_are_late() -> None:
    book = _core.CorrelationBook()
    ids = [book.register(d) for d in (5.0, 1.0, None, 3.0, 1.0)]
    assert book.next_deadline() == 1.0
    assert book.expire(0.999) == []
    # equal deadlines: the lower id first; never a request without one
    assert book.expire(3.0) == [(ids[1], False), (ids[4], False), (ids[3], False)]
    assert book.next_deadline() == 5.0 and book.pending == 2
    assert [book.settle(i | REPLY) for i in ids] == [DELIVER, LATE, DELIVER, LATE, LATE]
    assert book.expire(math.ldexp(1.0, 30)) == []
    assert book.stats["timeouts"] == 3 and book.stats["late"] == 3


def test_the_memory_of_expired_ids_keeps_the_last_expired_keep() -> None:
    book = _core.CorrelationBook()
    n = _core.EXPIRED_KEEP + 1
    first = book.register(0.0)
    for _ in range(n - 1):
        book.register(0.0)
    assert len(book.expire(0.0)) == n
    # the oldest is forgotten: its reply can no longer be told from a
    # second reply (the asyncio driver's rule too); the next one is late
    assert not book.is_expired(first) and book.is_expired(first + 1)
    assert book.settle(first | REPLY) == DUPLICATE
    assert book.settle((first + 1) | REPLY) == LATE


def test_an_in_order_book_matches_by_position() -> None:
    book = _core.CorrelationBook(in_order=True)
    assert book.in_order and book.settle_next() == (NONE, 0)  # a message
    a = book.register(1.0)
    b = book.register()
    c = book.register()
    assert book.owed == 3
    assert book.expire(1.0) == [(a, False)]
    assert book.owed == 3 and book.pending == 2  # a's reply is still owed
    assert book.settle_next() == (LATE, a)       # never handed to b
    assert book.settle_next() == (DELIVER, b)
    assert book.unsend(c) and book.owed == 0     # c never left: id given back
    assert book.register() == c
    assert book.settle_next() == (DELIVER, c)
    assert book.settle_next() == (NONE, 0)
    assert book.stats["unknown"] == 0


def test_in_order_timeouts_after_a_dropped_late_reply_are_out_of_step() -> None:
    book = _core.CorrelationBook(in_order=True)
    a = book.register(1.0)
    b = book.register(2.0)
    assert book.expire(1.0) == [(a, False)]
    assert book.settle_next() == (LATE, a)   # dropped while b waited
    assert book.expire(2.0) == [(b, True)]   # replies arrive behind
    c = book.register(3.0)
    assert book.expire(3.0) == [(c, False)]  # nothing dropped during c's wait


def test_bad_arguments_are_refused() -> None:
    book = _core.CorrelationBook()
    with pytest.raises(TypeError, match="request id is an int"):
        book.settle("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="request id"):
        book.settle(-1)
    with pytest.raises(ValueError, match="deadline must be a finite number"):
        book.register(float("nan"))
    with pytest.raises(ValueError, match="settle_next"):
        _core.CorrelationBook(in_order=True).settle(1)
    with pytest.raises(ValueError, match="settle\\(reply_id\\)"):
        book.settle_next()
    with pytest.raises(RuntimeError, match="not initialised"):
        _core.CorrelationBook.__new__(_core.CorrelationBook).register()


def test_the_book_counts_as_the_threaded_duplex_does() -> None:
    """The same replies (late, stranger, answer, duplicate) on a real
    loopback pair with the threaded duplex, and through the book: the same
    counts (the duplex's ``unknown`` includes the duplicates)."""
    framing = sk.Framing(correlation=True)
    book = _core.CorrelationBook()
    with sk.listen(("127.0.0.1", 0), framing=framing) as srv:
        with sk.connect(srv.address, timeout=T, framing=framing) as cli, \
                srv.accept(timeout=T) as peer:
            d = cli.start_receiver()
            fut = d.request_async(b"slow", timeout=0.05)
            rid, _ = peer.recv(timeout=T)
            with pytest.raises(sk.Timeout):
                fut.result(timeout=T)
            fut2 = d.request_async(b"fast", timeout=T)
            rid2, _ = peer.recv(timeout=T)
            replies = [rid | REPLY, 987654 | REPLY, rid2 | REPLY, rid2 | REPLY]
            for r in replies:
                peer.send(b"x", id=r)
            assert fut2.result(timeout=T) == b"x"
            assert wait_until(lambda: d.stats["unknown"] == 2, timeout=T)
            threaded = d.stats
    # the book, fed the same ids
    assert (book.register(0.0), book.register()) == (rid, rid2)
    assert book.expire(0.0) == [(rid, False)]
    assert [book.settle(r) for r in replies] == [LATE, STRAY, DELIVER, DUPLICATE]
    st = book.stats
    assert (st["replies"], st["late"], st["timeouts"]) == (
        threaded["replies"], threaded["late"], threaded["timeouts"])
    assert st["unknown"] + st["duplicate"] == threaded["unknown"]
