"""The state lab (pysockkit.lab): every TCP state, reproduced on loopback.

Each state is checked three ways: by the scene's own observation
(``scene.observed``), by looking again ourselves (TCP_INFO on the socket,
or sock_diag for sockets with no descriptor), and by ``ss -tan`` from
iproute2 as an independent oracle.  ``ss`` does not list CLOSED sockets;
for those TCP_INFO (state 7) is the only witness.

TIME_WAIT sockets left by other tests (or earlier runs) may share a port
with ours, so everything is matched on the scene's exact 4-tuple.

The lab must work without privileges; CI runs as root, so one test reruns
every recipe in a child process as ``nobody``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

import pysockkit as sk
from pysockkit import lab
from pysockkit._observe import find_socket

from helpers import scaled, wait_until

T = scaled(2.0)  # the lab's own default timeout for reaching a state, scaled

FAMILIES = ("ipv4", "ipv6")
SS = shutil.which("ss")
NSENTER = shutil.which("nsenter")
UNSHARE = shutil.which("unshare")


def _ss_host_port(text: str) -> tuple[str, int]:
    """``127.0.0.1:80`` / ``[::1]:80`` / ``0.0.0.0:*`` / ``*:*`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if "%" in host:  # [::1%lo]
        host = host.split("%", 1)[0]
    if host == "*":
        host = ""
    return host, 0 if port == "*" else int(port)


def _same_host(a: str, b: str) -> bool:
    wild = {"", "0.0.0.0", "::", "*"}
    return a == b or (a in wild and b in wild)


def ss_states(four: tuple[str, int, str, int], netns_pid: Optional[int] = None) -> list[str]:
    """The states ``ss -tan`` lists for exactly this 4-tuple (seen from the
    socket's side: local then remote).  With *netns_pid*, ss runs in that
    process's network namespace (through its user namespace)."""
    assert SS is not None
    cmd = [SS, "-tanH", f"( sport = :{four[1]} )"]
    if netns_pid is not None:
        assert NSENTER is not None
        cmd = [NSENTER, "-t", str(netns_pid), "-U", "-n", "--preserve-credentials"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        lhost, lport = _ss_host_port(parts[3])
        rhost, rport = _ss_host_port(parts[4])
        if (_same_host(lhost, four[0]) and lport == four[1]
                and _same_host(rhost, four[2]) and rport == four[3]):
            found.append(parts[0])
    return found


def _unshare_works(prefix: tuple[str, ...] = ()) -> bool:
    if UNSHARE is None:
        return False
    try:
        r = subprocess.run([*prefix, UNSHARE, "-Urn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


needs_ss = pytest.mark.skipif(SS is None, reason="ss (iproute2) is not installed")


# ----------------------------------------------------------------- the table


def test_states_table_covers_every_state() -> None:
    table = lab.states()
    assert [r.state for r in table if not r.on_fd] == list(lab.ALL_STATES)
    assert len(lab.ALL_STATES) == 12 and len(set(lab.ALL_STATES)) == 12
    assert set(lab.ALL_STATES) == set(sk.TcpState)
    for r in table:
        assert r.observed_by in ("TCP_INFO", "sock_diag")
        assert r.how and "\n" not in r.how
        assert r.lasts and r.needs
    assert table.get(sk.TcpState.NEW_SYN_RECV).observed is sk.TcpState.SYN_RCVD
    fd = table.get("syn-recv", on_fd=True)
    assert fd.needs == "unshare -Urn" and fd.observed_by == "TCP_INFO"
    with pytest.raises(KeyError):
        table.get(sk.TcpState.TIME_WAIT, on_fd=True)
    text = str(table)
    for st in sk.TcpState:
        assert st.name in text
    assert text.splitlines()[0].split() == ["state", "observed", "by", "needs", "how"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        lab.reproduce("no-such-state")
    with pytest.raises(ValueError):
        lab.reproduce(sk.TcpState.LISTEN, family="ipx")
    with pytest.raises(ValueError):
        lab.reproduce(sk.TcpState.LISTEN, family=socket.AF_UNIX)
    with pytest.raises(ValueError):
        lab.reproduce(sk.TcpState.LISTEN, timeout=0)
    with pytest.raises(TypeError):
        lab.reproduce(1.5)  # type: ignore[arg-type]


# ------------------------------------------------------- every state, twice


@needs_ss
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("state", lab.ALL_STATES, ids=lambda s: s.name)
def test_reproduce(state: sk.TcpState, family: str) -> None:
    recipe = lab.states().get(state)
    fam = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    host = "::1" if family == "ipv6" else "127.0.0.1"
    with lab.reproduce(state, family=family, timeout=T) as scene:
        # the scene's own account
        assert scene.state is state
        assert scene.observed is recipe.observed
        assert scene.reached
        assert scene.observed_by == recipe.observed_by
        assert scene.how == recipe.how
        assert 0.0 < scene.elapsed_s < T
        assert scene.family == fam
        assert scene.address == scene.four_tuple[:2]
        assert scene.address[0] == host and scene.address[1] > 0
        assert not scene.closed

        # looking again ourselves
        if recipe.observed_by == "TCP_INFO":
            assert scene.sock is not None
            assert sk.tcp_info(scene.sock).state is recipe.observed
            assert scene.sock.getsockname()[:2] == scene.address
        else:
            assert scene.sock is None  # TIME_WAIT, request socket: no fd
            e = find_socket(scene.four_tuple[:2], scene.four_tuple[2:])
            assert e is not None and e.state is recipe.observed
            assert e.inode == 0
        assert scene.current() is recipe.observed

        # the diag entry
        if state is sk.TcpState.CLOSED:
            assert scene.entry is None  # sock_diag does not list it
        else:
            assert scene.entry is not None
            assert scene.entry.state is recipe.observed
            assert scene.entry.local == scene.four_tuple[:2]
            assert scene.entry.remote == scene.four_tuple[2:]
            assert scene.entry.family == fam
        if state in (sk.TcpState.SYN_RCVD, sk.TcpState.NEW_SYN_RECV):
            assert scene.entry is not None and scene.entry.is_request
            assert scene.peer is not None and scene.listener is not None
            assert sk.tcp_info(scene.peer).state is sk.TcpState.ESTABLISHED
            assert "NEW_SYN_RECV" in scene.note
        if state is sk.TcpState.TIME_WAIT:
            assert scene.entry is not None and scene.entry.timer == "time_wait"
        if state is sk.TcpState.LISTEN:
            assert scene.listener is scene.sock

        # the independent oracle
        seen = ss_states(scene.four_tuple)
        if state is sk.TcpState.CLOSED:
            assert seen == []  # ss never lists CLOSED sockets
            assert sk.tcp_info(scene.sock).state == 7
        else:
            assert seen == [recipe.observed.ss_name], (scene, seen)

        socks = [s for s in (scene.sock, scene.peer, scene.listener, *scene.others)
                 if s is not None]
        with pytest.raises(dataclasses.FrozenInstanceError):
            scene.state = sk.TcpState.LISTEN  # type: ignore[misc]

    # released: every socket closed, nothing left but a TIME_WAIT's timewait sock
    assert scene.closed
    assert all(s.fileno() == -1 for s in socks)
    with pytest.raises(ValueError):
        scene.current()
    scene.close()  # idempotent
    if state is sk.TcpState.TIME_WAIT:
        e = find_socket(scene.four_tuple[:2], scene.four_tuple[2:])
        assert e is not None and e.state is sk.TcpState.TIME_WAIT
    else:
        assert wait_until(lambda: find_socket(scene.four_tuple[:2],
                                              scene.four_tuple[2:]) is None, timeout=scaled(1.0))


def test_states_are_held() -> None:
    """Every state at once, held past the timers that could end it early:
    the first SYN retransmit (1 s), the minimum RTO (200 ms, FIN
    retransmit), the first zero-window probe, the delayed ACK."""
    scenes = []
    try:
        for family in FAMILIES:
            for state in lab.ALL_STATES:
                scenes.append(lab.reproduce(state, family=family, timeout=T))
        time.sleep(1.3)
        for scene in scenes:
            assert scene.current() is scene.observed, scene
    finally:
        for scene in scenes:
            scene.close()


def test_timeout_is_typed_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without TCP_DEFER_ACCEPT the bare ACK completes the handshake at once:
    # a real kernel that never shows the request socket.
    monkeypatch.setattr(lab._build, "_DEFER_ACCEPT_S", 0)  # the recipes at work (lab/_build.py)
    t0 = time.monotonic()
    with pytest.raises(sk.Timeout) as info:
        lab.reproduce(sk.TcpState.SYN_RCVD, timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < scaled(1.5)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, sk.Error)
    msg = str(info.value)
    assert "SYN_RCVD" in msg and "not reached within 0.2 s" in msg
    assert "ESTABLISHED" in msg  # what was seen instead


def test_survey_and_accepted_spellings() -> None:
    s = lab.survey("ipv6", states=["LISTEN", 8, sk.TcpState.TIME_WAIT], include_on_fd=False,
                   timeout=T)
    assert [o.state for o in s] == [sk.TcpState.LISTEN, sk.TcpState.CLOSE_WAIT,
                                    sk.TcpState.TIME_WAIT]
    assert s.all_reached and all(o.error is None for o in s)
    text = str(s)
    assert "CLOSE_WAIT" in text and "ms" in text and "sock_diag" in text
    with lab.reproduce("close-wait", family=socket.AF_INET6, timeout=T) as scene:
        assert scene.family == socket.AF_INET6 and scene.observed is sk.TcpState.CLOSE_WAIT
    with lab.reproduce(10, family=6, timeout=T) as scene:
        assert scene.observed is sk.TcpState.LISTEN and scene.address[0] == "::1"
        assert "LISTEN" in repr(scene)


# ------------------------------------------------ SYN_RCVD on a descriptor


@pytest.mark.skipif(not _unshare_works(), reason="`unshare -Urn` does not work here "
                    "(no util-linux unshare, or unprivileged user namespaces disabled)")
@pytest.mark.parametrize("family", FAMILIES)
def test_syn_rcvd_on_fd(family: str) -> None:
    with lab.reproduce(sk.TcpState.SYN_RCVD, family=family, on_fd=True, timeout=T) as scene:
        assert scene.reached and scene.observed_by == "TCP_INFO"
        assert scene.sock is not None
        assert sk.tcp_info(scene.sock).state is sk.TcpState.SYN_RCVD
        assert sk.tcp_info(scene.sock.fileno()).state == 3
        # simultaneous open: the socket connected to its own port
        assert scene.four_tuple[:2] == scene.four_tuple[2:]
        assert scene.entry is not None and scene.entry.state is sk.TcpState.SYN_RCVD
        assert scene.entry.inode != 0  # a full socket, not a request socket
        pid = scene.netns_pid
        assert pid is not None
        # the oracle, in the helper's namespace
        if NSENTER is not None and SS is not None:
            assert ss_states(scene.four_tuple, netns_pid=pid) == ["SYN-RECV"]
        # the host namespace does not have it
        assert find_socket(scene.four_tuple[:2], scene.four_tuple[2:]) is None
        assert scene.current() is sk.TcpState.SYN_RCVD
    assert scene.closed and scene.sock.fileno() == -1
    assert not Path(f"/proc/{pid}").exists()  # helper exited and was reaped


def test_on_fd_unavailable_is_a_clear_typed_error() -> None:
    with pytest.raises(lab.LabUnavailable) as info:
        lab.reproduce(sk.TcpState.SYN_RCVD, on_fd=True, unshare="/nonexistent/unshare")
    assert isinstance(info.value, sk.Error)
    assert "unshare -Urn" in str(info.value) and "not found" in str(info.value)

    # an unshare that fails (as when user namespaces are disabled)
    false = shutil.which("false")
    assert false is not None
    with pytest.raises(lab.LabUnavailable) as info:
        lab.reproduce(sk.TcpState.SYN_RCVD, on_fd=True, unshare=false)
    assert "exited with status 1" in str(info.value)

    for state in (sk.TcpState.TIME_WAIT, sk.TcpState.NEW_SYN_RECV):
        with pytest.raises(lab.LabUnavailable, match="never has a file descriptor"):
            lab.reproduce(state, on_fd=True)

    # states that always have a descriptor: on_fd changes nothing
    with lab.reproduce(sk.TcpState.CLOSE_WAIT, on_fd=True, timeout=T) as scene:
        assert scene.sock is not None and scene.netns_pid is None

    # survey() turns the error into a row
    s = lab.survey(states=[], include_on_fd=True, timeout=T)
    assert len(s) == 1 and s[0].on_fd
    if _unshare_works():  # the row is reached exactly when unshare -Urn works here
        assert s[0].reached and s[0].error is None, s[0]
    else:
        assert not s[0].reached and s[0].error is not None and "unshare" in s[0].error, s[0]


# ------------------------------------------------------------ the tour step


def test_tour_step(capsys: pytest.CaptureFixture[str]) -> None:
    from pysockkit import _tour

    step = [f for f in _tour.STEPS if f.__name__ == "step_state_lab"]
    assert len(step) == 1
    step[0]()
    out = capsys.readouterr().out
    for st in lab.ALL_STATES:
        assert st.name in out
    assert "TCP_INFO" in out and "sock_diag" in out and " ms" in out


# ----------------------------------------------------------- unprivileged

CHILD = r"""
import json, shutil, subprocess, sys, os
import pysockkit as sk
from pysockkit import lab

def ss_seen(four):
    out = subprocess.run([shutil.which("ss"), "-tanH", f"( sport = :{four[1]} )"],
                         capture_output=True, text=True, timeout=10).stdout
    def fmt(host, port):  # as ss prints it
        return ("[%s]:%s" if ":" in host else "%s:%s") % (host, port or "*")
    want_l, want_r = fmt(four[0], four[1]), fmt(four[2], four[3])
    return [l.split()[0] for l in out.splitlines()
            if l.split()[3:5] == [want_l, want_r]]

rows = []
for fam in ("ipv4", "ipv6"):
    for st in lab.ALL_STATES:
        with lab.reproduce(st, family=fam) as sc:
            rows.append({
                "family": fam, "state": st.name, "observed": sc.observed.name,
                "by": sc.observed_by, "reached": sc.reached, "elapsed_s": sc.elapsed_s,
                "tcp_info": None if sc.sock is None else sk.tcp_info(sc.sock).state.name,
                "diag": None if sc.entry is None else sc.entry.state.name,
                "ss": [] if st is sk.TcpState.CLOSED else ss_seen(sc.four_tuple),
            })
on_fd = {}
for fam in ("ipv4", "ipv6"):
    try:
        with lab.reproduce("SYN_RCVD", family=fam, on_fd=True) as sc:
            on_fd[fam] = {"reached": sc.reached,
                          "tcp_info": sk.tcp_info(sc.sock).state.name}
    except lab.LabUnavailable as exc:
        on_fd[fam] = {"unavailable": str(exc)}
print(json.dumps({"euid": os.geteuid(), "rows": rows, "on_fd": on_fd}))
"""


def _drop_privileges_prefix(user: pwd.struct_passwd) -> Optional[list[str]]:
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--clear-groups"]
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", user.pw_name, "--"]
    return None


def _interpreters() -> list[str]:
    """sys.executable first; then interpreters of the same version (same
    extension ABI), for when sys.executable sits where nobody may not go
    (a pyenv under /root)."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable, os.path.realpath(sys.executable)]
    for cand in (f"/usr/bin/python{v}", f"/usr/local/bin/python{v}",
                 shutil.which(f"python{v}"), shutil.which("python3")):
        if cand and os.path.exists(cand):
            found.append(cand)
    return list(dict.fromkeys(found))


# The child must be able to run its own sys.executable again (the on_fd
# helper does, under unshare), and must import the pysockkit it is given.
_PROBE = ("import pysockkit, os, sys; assert os.access(sys.executable, os.X_OK), "
          "sys.executable; print(os.path.realpath(pysockkit.__file__))")


def _find_python(prefix: list[str], pkg_parent: str,
                 tried: list[str]) -> tuple[Optional[str], dict[str, str]]:
    """An interpreter that *prefix* (the dropped user) can run and that
    imports pysockkit from *pkg_parent*, and the environment for it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    want = os.path.realpath(os.path.join(pkg_parent, "pysockkit", "__init__.py"))
    for cand in _interpreters():
        r = subprocess.run([*prefix, cand, "-c", _PROBE], capture_output=True, text=True,
                           env=env, cwd="/", timeout=30)
        last = (r.stdout + r.stderr).strip().splitlines()[-1:]
        tried.append(f"{cand} with {pkg_parent}: {last[0] if last else r.returncode}")
        if r.returncode == 0 and r.stdout.strip() == want:
            return cand, env
    return None, env


def test_every_state_as_an_unprivileged_user() -> None:
    if os.geteuid() != 0:
        prefix: list[str] = []  # already unprivileged: run as we are
        who = pwd.getpwuid(os.geteuid()).pw_name
    else:
        try:
            user = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user 'nobody' to drop privileges to")
        p = _drop_privileges_prefix(user)
        if p is None:
            pytest.skip("neither setpriv nor runuser (util-linux) is installed")
        prefix, who = p, "nobody"
    pkg_dir = Path(sk.__file__).resolve().parent
    tried: list[str] = []
    python, env = _find_python(prefix, str(pkg_dir.parent), tried)
    copy_dir: Optional[str] = None
    try:
        if python is None:
            # The package is where the user may not read (an sdist test in a
            # mode-700 mktemp dir): try again with a world-readable copy of it.
            copy_dir = tempfile.mkdtemp(prefix="pysockkit-lab-")
            os.chmod(copy_dir, 0o755)
            shutil.copytree(pkg_dir, os.path.join(copy_dir, "pysockkit"),
                            ignore=shutil.ignore_patterns("__pycache__"))
            python, env = _find_python(prefix, copy_dir, tried)
        if python is None:
            pytest.skip(f"{who} cannot run a Python {sys.version_info.major}."
                        f"{sys.version_info.minor} that imports this pysockkit (the "
                        f"repo, venv or interpreter is unreadable to it); tried {tried}")
        r = subprocess.run([*prefix, python, "-W", "error", "-c", CHILD],
                           capture_output=True, text=True, env=env, cwd="/", timeout=40)
    finally:
        if copy_dir is not None:
            shutil.rmtree(copy_dir, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["euid"] != 0
    rows = report["rows"]
    assert len(rows) == 2 * len(lab.ALL_STATES)
    for row in rows:
        recipe = lab.states().get(row["state"])
        assert row["reached"], row
        assert row["observed"] == recipe.observed.name, row
        assert row["by"] == recipe.observed_by, row
        if recipe.observed_by == "TCP_INFO":
            assert row["tcp_info"] == recipe.observed.name, row
        if row["state"] == "CLOSED":
            assert row["tcp_info"] == "CLOSED" and row["diag"] is None, row
        else:
            assert row["diag"] == recipe.observed.name, row
            assert row["ss"] == [recipe.observed.ss_name], row
    unshare_ok = _unshare_works(tuple(prefix))
    for fam in FAMILIES:
        res = report["on_fd"][fam]
        if unshare_ok:
            assert res == {"reached": True, "tcp_info": "SYN_RCVD"}, res
        else:
            assert "unshare" in res["unavailable"], res
