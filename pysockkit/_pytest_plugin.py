"""The pysockkit pytest plugin: real sockets, real faults, no leaks.

Registered through the ``pytest11`` entry point (name ``pysockkit``), so it
is active once pysockkit is installed; ``-p no:pysockkit`` turns it off.
Without an install, load it with ``-p pysockkit._pytest_plugin``.

Fixtures (all function-scoped; each closes its sockets and joins its
threads at teardown):

- ``sk_server``: a framed echo server (``sk.serve``) on a free loopback
  port, running in background threads; ``sk_server.address``.
- ``sk_server_factory(handler=None, *, framing=None)``: more servers, each
  answering every frame with ``handler(frame)`` (None: no reply).
- ``sk_pair``: a connected ``(client, server)`` pair of ``Connection``.
- ``sk_connections(n, addr=None, *, framing=None)``: ``n`` connections to
  ``addr`` (by default to ``sk_server``).
- ``sk_proxy``: a :class:`~pysockkit.FaultProxy` in front of ``sk_server``;
  connect to ``sk_proxy.address``.
- ``sk_proxy_factory(upstream, **options)``: more proxies.
- ``sk_link``: a :class:`~pysockkit.testing.Link`, two loopback hosts in a
  private network namespace with faults below TCP (``sk_link.set(loss=0.1)``,
  ``cut=True``, ``rate=``, ``delay=``, ``jitter=``, ``reorder=``,
  ``duplicate=``), closed at teardown.
- ``sk_lab``: the state lab; ``sk_lab.reproduce("CLOSE_WAIT")`` gives a
  scene that is closed at teardown (a state this machine cannot build
  skips the test).

Leak check: a test that uses any of these fixtures or makes a
:class:`~pysockkit.FaultProxy` (or every test, with ``--sk-leak-check=all``
or ini ``sk_leak_check = all``; or one marked ``@pytest.mark.sk_leak_check``)
fails at teardown if it leaves a socket open or a thread running that was
not there before it started, or drops a socket without closing it (the
ResourceWarning its finalizer gives, which Python hides by default, becomes
the failure): the report names each socket (state and addresses, or the
warning's description) and thread.  Opt a test out
with ``@pytest.mark.sk_no_leak_check``, or all unmarked tests with
``sk_leak_check = off`` (markers win over the option either way);
``sk_leak_action = warn`` turns the failure into a warning.
Resources made by fixtures of a broader scope (module, session) are not
counted against a test.

Assertions (:mod:`pysockkit.testing`, re-exported here):
``assert_state(conn_or_addr, "CLOSE_WAIT", within=1.0)`` and
``assert_frames(conn, [b"a", b"b"], within=1.0)``.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from ._conn import Address, Connection, connect, listen
from ._net import format_address
from ._serve import serve
from ._server import Handler, Server
from ._types import Framing
from .testing import FaultProxy, assert_frames, assert_state

__all__ = [
    "assert_state",
    "assert_frames",
    "SocketLeakWarning",
    "LabFixture",
]

# Upper bound for one setup step of a fixture (connect, accept).
STEP_TIMEOUT = 5.0

FIXTURES = frozenset(
    {
        "sk_server",
        "sk_server_factory",
        "sk_pair",
        "sk_connections",
        "sk_proxy",
        "sk_proxy_factory",
        "sk_lab",
        "sk_link",
    }
)
_MODES = ("fixtures", "all", "off")
_ACTIONS = ("fail", "warn")


class SocketLeakWarning(UserWarning):
    """A test left a socket open or a thread running (``sk_leak_action =
    warn``)."""


# ------------------------------------------------------------------ options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pysockkit", "pysockkit: sockets and faults in tests")
    group.addoption(
        "--sk-leak-check",
        dest="sk_leak_check",
        choices=_MODES,
        default=None,
        help="check tests for leaked sockets and threads: 'fixtures' (tests "
        "using pysockkit fixtures; the default), 'all', or 'off'",
    )
    parser.addini(
        "sk_leak_check",
        "pysockkit leak check: fixtures (default), all, off",
        default="fixtures",
    )
    parser.addini(
        "sk_leak_action",
        "what a leak does: fail (an error at teardown; default) or warn",
        default="fail",
    )
    parser.addini(
        "sk_leak_grace",
        "seconds to wait for sockets and threads to go away before a leak "
        "is reported (default 1.0)",
        default="1.0",
    )


@dataclass(frozen=True)
class _Settings:
    mode: str
    action: str
    grace: float


_SETTINGS = pytest.StashKey[_Settings]()
_EXEMPT = pytest.StashKey["_Exempt"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sk_leak_check: check this test for leaked sockets and threads (pysockkit)"
    )
    config.addinivalue_line(
        "markers", "sk_no_leak_check: do not check this test for leaked sockets and threads"
    )
    mode = config.getoption("sk_leak_check") or str(config.getini("sk_leak_check")).strip()
    action = str(config.getini("sk_leak_action")).strip()
    grace_text = str(config.getini("sk_leak_grace")).strip()
    if mode not in _MODES:
        raise pytest.UsageError(f"sk_leak_check must be one of {', '.join(_MODES)}, not {mode!r}")
    if action not in _ACTIONS:
        raise pytest.UsageError(f"sk_leak_action must be fail or warn, not {action!r}")
    try:
        grace = float(grace_text)
    except ValueError:
        raise pytest.UsageError(f"sk_leak_grace must be a number of seconds, not {grace_text!r}") from None
    config.stash[_SETTINGS] = _Settings(mode, action, max(0.0, grace))
    config.stash[_EXEMPT] = _Exempt()


def pytest_report_header(config: pytest.Config) -> str:
    from ._version import __version__

    s = config.stash[_SETTINGS]
    return f"pysockkit {__version__}: leak check {s.mode} ({s.action})"


# ------------------------------------------------------------------ leak check


@dataclass(frozen=True)
class _Snapshot:
    sockets: frozenset[tuple[int, int]]  # (fd, inode)
    threads: frozenset[threading.Thread]
    tasks: frozenset[int]  # native thread ids


def _socket_fds() -> frozenset[tuple[int, int]]:
    out = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return frozenset()
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (or the listdir's own descriptor)
        if target.startswith("socket:["):
            out.add((int(name), int(target[8:-1])))
    return frozenset(out)


def _tasks() -> frozenset[int]:
    try:
        return frozenset(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return frozenset()


def _snapshot() -> _Snapshot:
    threads = frozenset(t for t in threading.enumerate() if t.is_alive())
    return _Snapshot(_socket_fds(), threads, _tasks())


class _Exempt:
    """Resources made by broader-scoped fixtures: not a test's leak."""

    def __init__(self) -> None:
        self.sockets: set[tuple[int, int]] = set()
        self.threads: set[threading.Thread] = set()
        self.tasks: set[int] = set()

    def add(self, before: _Snapshot, after: _Snapshot) -> None:
        self.sockets |= after.sockets - before.sockets
        self.threads |= after.threads - before.threads
        self.tasks |= after.tasks - before.tasks


def _task_name(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _describe_socket(fd: int, inode: int) -> str:
    """What a leaked descriptor is, asked of the descriptor itself (a
    sock_diag dump would cost a second with 50k TIME_WAIT sockets around)."""
    from . import _core
    from ._observe import fd_state

    try:
        state = fd_state(fd).name
    except (OSError, ValueError):
        return f"socket fd {fd}: socket inode {inode} (not a TCP socket)"
    try:
        where = format_address(_core.sockname(fd))
    except (OSError, ValueError):
        where = "unbound"
    try:
        where += f" -> {format_address(_core.peername(fd))}"
    except (OSError, ValueError):
        pass
    return f"socket fd {fd}: TCP {state} {where}"


@dataclass(frozen=True)
class _Leaks:
    sockets: list[tuple[int, int]]
    threads: list[threading.Thread]
    tasks: list[int]

    def __bool__(self) -> bool:
        return bool(self.sockets or self.threads or self.tasks)

    def describe(self) -> list[str]:
        out = [_describe_socket(fd, inode) for fd, inode in self.sockets]
        for t in self.threads:
            out.append(f"thread {t.name!r} (daemon={t.daemon}) is still running")
        for tid in self.tasks:
            out.append(f"native thread {_task_name(tid)!r} (tid {tid}) is still running")
        return out


def _leaks(before: _Snapshot, after: _Snapshot, exempt: _Exempt) -> _Leaks:
    socks = sorted(after.sockets - before.sockets - exempt.sockets)
    threads = sorted(after.threads - before.threads - exempt.threads, key=lambda t: t.name)
    py_tids = {t.native_id for t in after.threads}
    tasks = [
        tid
        for tid in sorted(after.tasks - before.tasks - exempt.tasks)
        if tid not in py_tids and os.path.exists(f"/proc/self/task/{tid}")
    ]
    return _Leaks(socks, threads, tasks)


def _wants_check(request: pytest.FixtureRequest, mode: str) -> bool:
    node = request.node
    if node.get_closest_marker("sk_no_leak_check") is not None:
        return False
    if node.get_closest_marker("sk_leak_check") is not None:
        return True
    if mode == "all":
        return True
    if mode == "off":
        return False
    return any(name in FIXTURES for name in request.fixturenames)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """Remember what broader-scoped fixtures open, so that a test which
    happens to set one up first is not blamed for it."""
    settings = request.config.stash.get(_SETTINGS, None)
    if fixturedef.scope == "function" or settings is None or settings.mode == "off":
        return (yield)
    before = _snapshot()
    try:
        return (yield)
    finally:
        request.config.stash[_EXEMPT].add(before, _snapshot())


# ResourceWarnings that name a socket: the stdlib's ("unclosed <socket.socket
# fd=5, family=2, ... laddr=..., raddr=...>") and pysockkit's own (unclosed
# pysockkit connection / listener / FaultProxy).
_SOCKET_WARNING = r"unclosed (<socket|pysockkit)"


class _DroppedSockets:
    """Collects, while a test runs, the ResourceWarnings of sockets dropped
    without close (their finalizer closed the descriptor, so the descriptor
    snapshot cannot see them).  Every other warning is kept and re-emitted
    unchanged when the test ends, so pytest's own warning handling (and a
    ``filterwarnings = error``) sees it as before."""

    def __init__(self) -> None:
        self._cm = warnings.catch_warnings(record=True)
        self._log: list[warnings.WarningMessage] = []

    def __enter__(self) -> _DroppedSockets:
        self._log = self._cm.__enter__()
        warnings.filterwarnings("always", category=ResourceWarning, message=_SOCKET_WARNING)
        return self

    def close(self, report: Callable[[], bool]) -> list[str]:
        """Stop collecting; the dropped sockets' descriptions if
        ``report()`` (else their warnings go on as the others do)."""
        import gc
        import re

        gc.collect()  # finalize sockets kept only by reference cycles
        self._cm.__exit__(None, None, None)
        dropped, others = [], []
        keep = report()
        for w in self._log:
            if (keep and issubclass(w.category, ResourceWarning)
                    and re.match(_SOCKET_WARNING, str(w.message))):
                dropped.append(f"{w.message} was dropped without close "
                               f"(finalized; allocated or last seen at {w.filename}:{w.lineno})")
            else:
                others.append(w)
        for w in others:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                   source=w.source)
        return dropped


def _proxies_made() -> int:
    from .testing.proxy import FaultProxy

    return FaultProxy._made


@pytest.fixture(autouse=True)
def _sk_leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    settings = request.config.stash[_SETTINGS]
    node = request.node
    if settings.mode == "off" and node.get_closest_marker("sk_leak_check") is None:
        yield
        return
    if node.get_closest_marker("sk_no_leak_check") is not None:
        yield
        return
    wanted = _wants_check(request, settings.mode)
    # autouse fixtures are set up before the test's other function-scoped
    # fixtures and torn down after them: the snapshot brackets them all.
    # Tests that the settings leave unchecked are bracketed too: one that
    # makes a FaultProxy is checked all the same.
    before = _snapshot()
    made = _proxies_made()
    catcher = _DroppedSockets().__enter__()
    try:
        yield
    finally:
        dropped = catcher.close(lambda: wanted or _proxies_made() != made)
    if not wanted and _proxies_made() == made:
        return
    exempt = request.config.stash[_EXEMPT]
    deadline = time.monotonic() + settings.grace
    while True:
        leaks = _leaks(before, _snapshot(), exempt)
        if not leaks or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    lines = dropped + (leaks.describe() if leaks else [])
    if not lines:
        return
    msg = (
        f"{request.node.nodeid} leaked {len(lines)} resource(s) "
        "(pysockkit leak check; opt out with @pytest.mark.sk_no_leak_check):\n  "
        + "\n  ".join(lines)
    )
    if settings.action == "warn":
        warnings.warn(msg, SocketLeakWarning, stacklevel=1)
    else:
        pytest.fail(msg, pytrace=False)


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def sk_server_factory() -> Iterator[Callable[..., Server]]:
    """Factory of framed servers: ``sk_server_factory(handler=None, *,
    framing=None, addr=("127.0.0.1", 0))`` starts ``sk.serve`` in
    background threads and returns the :class:`~pysockkit.Server`
    (``.address``).  ``handler(payload) -> reply or None`` runs for each
    frame (echo by default; with ``Framing(correlation=True)`` a request's
    reply carries its id).  Every server is closed at teardown."""
    servers: list[Server] = []

    def make(
        handler: Optional[Handler] = None,
        *,
        framing: Optional[Framing] = None,
        addr: Address = ("127.0.0.1", 0),
    ) -> Server:
        srv = serve(addr, handler, framing=framing)
        servers.append(srv)
        return srv

    yield make
    for srv in reversed(servers):
        srv.close()


@pytest.fixture
def sk_server(sk_server_factory: Callable[..., Server]) -> Server:
    """A framed echo server on a free loopback port (``sk_server.address``)."""
    return sk_server_factory()


@pytest.fixture
def sk_pair() -> Iterator[tuple[Connection, Connection]]:
    """A connected ``(client, server)`` pair of pysockkit Connections over
    loopback.  Both are closed at teardown."""
    with listen(("127.0.0.1", 0)) as lst:
        client = connect(lst.address, timeout=STEP_TIMEOUT)
        try:
            server = lst.accept(timeout=STEP_TIMEOUT)
        except BaseException:
            client.close()
            raise
    try:
        yield client, server
    finally:
        client.close()
        server.close()


@pytest.fixture
def sk_connections(request: pytest.FixtureRequest) -> Iterator[Callable[..., list[Connection]]]:
    """Factory: ``sk_connections(n, addr=None, *, framing=None,
    timeout=5.0)`` opens ``n`` client connections to ``addr`` (by default
    to the ``sk_server`` echo server) and returns them; all are closed at
    teardown."""
    conns: list[Connection] = []

    def make(
        n: int,
        addr: Optional[Address] = None,
        *,
        framing: Optional[Framing] = None,
        timeout: float = STEP_TIMEOUT,
    ) -> list[Connection]:
        if addr is None:
            addr = request.getfixturevalue("sk_server").address
        assert addr is not None
        out: list[Connection] = []
        for _ in range(n):
            c = connect(addr, timeout=timeout, framing=framing)
            conns.append(c)
            out.append(c)
        return out

    yield make
    for c in conns:
        c.close()


@pytest.fixture
def sk_proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``sk_proxy_factory(upstream_addr, **options)`` starts a
    :class:`~pysockkit.FaultProxy` to ``upstream_addr`` (options as for
    FaultProxy); every proxy is closed at teardown."""
    proxies: list[FaultProxy] = []

    def make(upstream: Address, **options: Any) -> FaultProxy:
        p = FaultProxy(upstream, **options)
        proxies.append(p)
        return p

    yield make
    for p in reversed(proxies):
        p.close()


@pytest.fixture
def sk_proxy(sk_server: Server, sk_proxy_factory: Callable[..., FaultProxy]) -> FaultProxy:
    """A :class:`~pysockkit.FaultProxy` in front of the ``sk_server`` echo
    server: connect to ``sk_proxy.address``; switch faults with
    ``sk_proxy.add(...)`` or ``with sk_proxy.fault(...)``."""
    return sk_proxy_factory(sk_server.address)


class LabFixture:
    """The ``sk_lab`` fixture: :mod:`pysockkit.lab` with cleanup.

    ``reproduce(state, **kw)`` returns a scene already in that state and
    closes it at teardown; a state this machine cannot build
    (``LabUnavailable``) skips the test.  ``states()`` lists the recipes.
    """

    def __init__(self) -> None:
        self._scenes: list[Any] = []

    def reproduce(self, state: Any, **kw: Any) -> Any:
        from . import lab

        try:
            scene = lab.reproduce(state, **kw)
        except lab.LabUnavailable as exc:
            pytest.skip(f"the state lab cannot build {state!r} here: {exc}")
        self._scenes.append(scene)
        return scene

    def states(self) -> Any:
        from . import lab

        return lab.states()

    def close(self) -> None:
        while self._scenes:
            self._scenes.pop().close()


@pytest.fixture
def sk_lab() -> Iterator[LabFixture]:
    """The TCP state lab: ``scene = sk_lab.reproduce("TIME_WAIT")`` holds a
    loopback socket in that state (``scene.sock``, ``scene.four_tuple``)
    until teardown."""
    lab = LabFixture()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def sk_link() -> Iterator[Any]:
    """A :class:`~pysockkit.testing.Link`: ``sk_link.listen()`` and
    ``sk_link.connect(addr)`` give sockets in a private network namespace,
    ``sk_link.set(loss=0.1)`` (or ``cut=True``, ``rate=bytes/s``,
    ``delay=s``, ``jitter=s``, ``reorder=p``, ``duplicate=p``) breaks the
    link at the IP layer, so TCP really retransmits.  Closed at teardown."""
    from .testing.link import Link

    link = Link()
    try:
        yield link
    finally:
        link.close()
