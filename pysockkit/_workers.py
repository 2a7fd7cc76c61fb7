"""sk.serve(processes=N): N worker processes sharing one port.

Each worker is a forked copy of the calling process that listens on the
same address with ``SO_REUSEPORT`` (the kernel spreads new connections
over the listeners) and runs its own :class:`sk.Server` on its own C
reactor.  The parent keeps the port reserved (a bound socket with
``SO_REUSEPORT`` that does not listen), watches the workers, restarts one
that dies (and records why in ``errors``), and sums the workers' records
when asked.  ``close()`` stops them all.
"""

from __future__ import annotations

import multiprocessing.connection as mpc
import os
import pickle
import signal
import socket
import threading
import time
import warnings
from typing import Any, Optional

from ._conn import Address, Listener
from ._errors import Error
from ._handler import ServerExits, log
from ._net import check_timeout, format_address, resolve
from ._reconnect import EventReader
from ._server import Handler, Server
from ._types import Framing, Heartbeat

_WATCH = 0.05  # how often the parent looks for dead workers, in seconds
_REFRESH = 1.0  # how often it asks the workers for their records, in seconds
_ASK = 5.0  # how long the parent waits for a worker's records, at most


def _listener(fam: int, host: str, port: int, backlog: int, framing: Framing[Any],
              heartbeat: Optional[Heartbeat]) -> Listener[Any]:
    """A non-blocking listener on (host, port) with SO_REUSEPORT."""
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # inherited by every accepted socket (Linux), as sk.listen's listener
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((host, port))
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return Listener(s.detach(), framing, heartbeat)


def _portable(exc: BaseException) -> BaseException:
    """exc if it survives pickling (to the parent), else an sk.Error
    naming it."""
    try:
        pickle.dumps(exc)
    except Exception:
        return Error(f"{type(exc).__name__}: {exc}")
    return exc


def _worker_main(ctl: mpc.Connection, make: "tuple[Any, ...]") -> None:
    """The body of a worker process: serve until the parent says "close"
    (or goes away); answer "records" with (served, exits, errors), and
    "close" with the final ones."""
    fam, host, port, backlog, framing, heartbeat, handler, limits, workers = make
    srv = Server(_listener(fam, host, port, backlog, framing, heartbeat), handler, *limits,
                 workers=workers)
    try:
        ctl.send(("ready", os.getpid()))
        while True:
            try:
                cmd = ctl.recv()
            except (EOFError, OSError):
                return
            if cmd == "close":
                srv.close()
            ctl.send((srv.served, vars(srv.exits), [_portable(e) for e in srv.errors]))
            if cmd == "close":
                return
    finally:
        srv.close()


class _Worker:
    __slots__ = ("index", "pid", "ctl", "last")

    def __init__(self, index: int, pid: int, ctl: mpc.Connection) -> None:
        self.index = index
        self.pid = pid
        self.ctl = ctl
        # its records when last asked: what a worker that dies took with it
        # since then is lost, the rest is kept
        self.last: tuple[int, dict[str, int], list[BaseException]] = (0, {}, [])


class ProcessServer(Server):
    """The :class:`sk.Server` that ``sk.serve(..., processes=N)`` returns:
    N worker processes, each with its own reactor, on one port.

    ``served``, ``exits`` and ``errors`` sum the workers' records (asked
    for on each read, and every second); a worker that dies is restarted, and its death is
    in ``errors`` (an ``sk.Error`` naming the worker, its pid and how it
    ended), as are the records it had when last asked.  ``close()`` stops
    every worker (SIGKILL for one that does not end in ``timeout``).

    Example::

        with sk.serve(("127.0.0.1", 0), lambda m: m, processes=2) as srv:
            print(sk.call(srv.address, b"hi", timeout=1.0))   # b'hi'
    """

    def __init__(self, addr: Any, handler: Optional[Handler], framing: Framing[Any],
                 backlog: int, limits: "tuple[Optional[float], Optional[float], Optional[int]]",
                 workers: int, heartbeat: Optional[Heartbeat], processes: int) -> None:
        fam, host, port = resolve(addr)[0]
        self._reserve = socket.socket(fam, socket.SOCK_STREAM)
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self._reserve.bind((host, port))
        except OSError as exc:
            self._reserve.close()
            raise Error(exc.errno or 0, f"sk.serve: bind {format_address((host, port))}: "
                        f"{exc.strerror}; choose another port") from None
        name = self._reserve.getsockname()
        self._address: Address = (str(name[0]), int(name[1]))
        self._make = (fam, host, self._address[1], backlog, framing, heartbeat,
                      handler, limits, workers)
        self._stop = threading.Event()
        self._plock = threading.Lock()  # the worker list and the dead workers' records
        self._ask = threading.Lock()  # one conversation with the workers at a time
        self._workers: list[_Worker] = []
        # the records of the workers that ended, and the deaths
        self._retired: tuple[int, dict[str, int], list[BaseException]] = (
            0, dict.fromkeys(vars(ServerExits()), 0), [])
        self._deaths: list[BaseException] = []
        try:
            for i in range(processes):
                self._workers.append(self._start(i))
        except BaseException:
            self.close()
            raise
        self._watcher = threading.Thread(target=self._watch, name="pysockkit-workers",
                                         daemon=True)
        self._watcher.start()

    def _start(self, index: int) -> _Worker:
        """Fork worker `index`; returns once it listens."""
        parent, child = mpc.Pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a process with threads may
            # deadlock the child on a lock another thread held.  The worker
            # runs only this module's code, which takes no lock that the
            # parent's threads hold across the fork (logging and threading
            # reinitialise theirs at fork); the warning is about arbitrary
            # code, and sk.serve's documented contract is a fork.
            warnings.filterwarnings("ignore", "This process .* is multi-threaded",
                                    DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            code = 0
            try:
                # Ctrl-C reaches the whole process group: the parent's
                # close() stops the workers, a worker must not end on it
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                parent.close()
                for other in self._workers:  # their pipes are the parent's
                    other.ctl.close()
                _worker_main(child, self._make)
            except BaseException:  # the parent sees the exit status
                code = 1
            finally:
                os._exit(code)
        child.close()
        w = _Worker(index, pid, parent)
        if not parent.poll(_ASK) or parent.recv()[0] != "ready":
            self._reap(w, kill=True)
            raise Error(f"sk.serve: worker process {index} (pid {pid}) did not start listening "
                        f"on {format_address(self._address)} within {_ASK} s")
        return w

    @staticmethod
    def _reap(w: _Worker, kill: bool, timeout: float = 2.0) -> str:
        """Wait for worker w to end (SIGKILL it if kill, or after timeout);
        how it ended."""
        w.ctl.close()
        if kill:
            os.kill(w.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(w.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(w.pid, signal.SIGKILL)
                pid, status = os.waitpid(w.pid, 0)
                break
            time.sleep(0.01)
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit status {os.waitstatus_to_exitcode(status)}"

    def _watch(self) -> None:
        """Restart a worker that died; record its death.  Every _REFRESH
        seconds ask each worker for its records, so that a worker killed
        takes at most that much of them with it."""
        refresh = time.monotonic() + _REFRESH
        while not self._stop.wait(_WATCH):
            if time.monotonic() >= refresh:
                with self._ask:
                    with self._plock:
                        workers = list(self._workers)
                    for w in workers:
                        if not self._stop.is_set():
                            self._ask_worker(w, "records")
                refresh = time.monotonic() + _REFRESH
            for i, w in enumerate(list(self._workers)):
                pid, status = os.waitpid(w.pid, os.WNOHANG)
                if not pid or self._stop.is_set():
                    continue
                how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"exit status {os.waitstatus_to_exitcode(status)}")
                w.ctl.close()
                exc = Error(f"sk.serve: worker process {w.index} (pid {w.pid}) died ({how}); "
                            "its clients were cut off, and a new worker was started")
                log.error("%s", exc)
                with self._plock:
                    self._retire(w)
                    self._deaths.append(exc)
                try:
                    new = self._start(w.index)
                except Error as e:
                    log.error("%s", e)
                    with self._plock:
                        self._deaths.append(e)
                    continue
                with self._plock:
                    self._workers[i] = new

    def _retire(self, w: _Worker) -> None:
        """Add the last records of w (ended) to the dead workers' (caller
        holds _plock)."""
        served, exits, errors = self._retired
        ls, le, lerr = w.last
        self._retired = (served + ls, {k: v + le.get(k, 0) for k, v in exits.items()},
                         errors + lerr)

    @staticmethod
    def _ask_worker(w: _Worker, cmd: str) -> None:
        """Send cmd ("records" or "close") to w and keep its answer in
        w.last (unchanged if it died meanwhile)."""
        try:
            w.ctl.send(cmd)
            if w.ctl.poll(_ASK):
                w.last = w.ctl.recv()
        except (OSError, EOFError):  # it just died: its last records count
            pass

    def _records(self) -> tuple[int, dict[str, int], list[BaseException]]:
        """The workers' records summed, with the dead workers' and the
        deaths."""
        with self._ask:
            with self._plock:
                workers = list(self._workers)
            for w in workers:
                self._ask_worker(w, "records")
        with self._plock:
            served, exits, errors = self._retired
            exits = dict(exits)
            errors = list(errors) + list(self._deaths)
        for w in workers:
            s, e, errs = w.last
            served += s
            for k, v in e.items():
                exits[k] = exits.get(k, 0) + v
            errors += errs
        return served, exits, errors[-1000:]

    @property
    def address(self) -> Address:
        """(host, port) the workers listen on.

        Example::

            >>> srv.address
            ('127.0.0.1', 40123)
        """
        return self._address

    @property
    def pids(self) -> list[int]:
        """The worker processes' pids, in worker order.

        Example::

            >>> len(srv.pids)
            2
        """
        with self._plock:
            return [w.pid for w in self._workers]

    @property
    def served(self) -> int:
        """Messages the workers' handlers handled (see :attr:`Server.served`).

        Example::

            >>> srv.served
            12
        """
        return self._records()[0]

    @property
    def exits(self) -> ServerExits:
        """The workers' client ends, summed (see :attr:`Server.exits`).

        Example::

            >>> srv.exits.closed
            3
        """
        return ServerExits(**self._records()[1])

    @property
    def errors(self) -> list[BaseException]:
        """The workers' errors and the workers' deaths (see
        :attr:`Server.errors`).

        Example::

            >>> [type(e).__name__ for e in srv.errors]
            []
        """
        return self._records()[2]

    @property
    def rejected(self) -> int:
        """Clients the workers reset over ``max_connections`` (each worker
        applies the cap to its own clients).

        Example::

            >>> srv.rejected
            0
        """
        return self.exits.rejected

    @property
    def _conns(self) -> "list[Any]":
        return []

    def events(self, wait: bool = True, timeout: Optional[float] = None) -> EventReader:
        """Not available with ``processes=N``: each worker process serves
        its own clients and their events stay in it; ``exits`` and
        ``errors`` sum the workers' records.  Raises ValueError.

        Example::

            srv.exits.closed      # instead of srv.events() with processes=N
        """
        raise ValueError(
            "server.events(): the client events of sk.serve(processes=N) stay in the "
            "worker process that served each client; use processes=1 for events, or "
            "server.exits and server.errors (summed over the workers)")

    def close(self, timeout: Optional[float] = 2.0) -> None:
        """Stop every worker (each closes its clients) and wait for them.

        Example::

            srv.close()
        """
        timeout = check_timeout(timeout)
        self._stop.set()
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.join(timeout)
        with self._ask:
            with self._plock:
                workers, self._workers = self._workers, []
            for w in workers:
                self._ask_worker(w, "close")  # its clients end as stopped
                self._reap(w, kill=False, timeout=2.0 if timeout is None else timeout)
                with self._plock:
                    self._retire(w)
        self._reserve.close()

    def __repr__(self) -> str:
        state = "closed" if self._stop.is_set() else f"processes={len(self._workers)}"
        return f"<pysockkit.Server {format_address(self._address)} {state}>"
