"""SYN_RCVD on a file descriptor: a helper in ``unshare -Urn`` makes a
simultaneous open whose SYN-ACK a socket filter drops, and sends the
descriptor back."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from typing import Optional

from .._enums import TcpState
from .._errors import Error, Timeout
from .._net import loopback_host
from .._observe import SocketEntry
from ._netns import _helper_start, _netns_helper, _sock_fprog
from .recipes import _RECIPES_BY_KEY, LabUnavailable
from .scene import Scene, _abort, _fd_state, _lookup, _name, _settle, _wait

_SO_ATTACH_FILTER = 26  # asm-generic/socket.h; not exported by the socket module


def _syn_rcvd_on_fd(fam: socket.AddressFamily, timeout: float, unshare: str) -> Scene:
    what = "SYN_RCVD on a file descriptor needs `unshare -Urn`"
    res, msg, fds = _netns_helper("pysockkit.lab._synrcvd:_helper_main",
                                  [str(int(fam)), repr(timeout)], what, timeout, unshare)
    try:
        report = json.loads(msg)
        if "error" in report:
            if report.get("kind") == "timeout":
                raise Timeout(report["error"])
            raise LabUnavailable(int(report.get("errno") or errno.EPERM),
                                 f"{what}: {report['error']}")
        if not fds:
            raise Error(errno.EPROTO, "lab: the helper sent no descriptor")
        sock = res.socks[0][0]
        observed = _fd_state(sock)  # seen here, through the descriptor we got
        e = report["entry"]
        entry = None if e is None else SocketEntry(
            family=socket.AddressFamily(e["family"]), state=TcpState(e["state"]),
            local=(e["local"][0], e["local"][1]), remote=(e["remote"][0], e["remote"][1]),
            inode=e["inode"], uid=e["uid"], timer=e["timer"], expires_s=e["expires_s"],
            retrans=e["retrans"], recv_q=e["recv_q"], send_q=e["send_q"],
            cookie=e["cookie"], ifindex=e["ifindex"])
        four = (str(report["four"][0]), int(report["four"][1]),
                str(report["four"][2]), int(report["four"][3]))
        assert res.proc is not None
        _settle(res, timeout)
        return Scene(
            state=TcpState.SYN_RCVD, observed=observed,
            how=_RECIPES_BY_KEY[(TcpState.SYN_RCVD, True)].how,
            observed_by="TCP_INFO", elapsed_s=float(report["elapsed_s"]),
            family=fam, address=(four[0], four[1]), four_tuple=four, sock=sock,
            entry=entry, netns_pid=res.proc.pid, _res=res,
            note="a full socket in SYN_RCVD, living in the helper's private network "
                 "namespace (host sock_diag and ss do not see it; nsenter -t "
                 "netns_pid -n ss -tan does); a socket filter drops every "
                 "SYN-ACK, so the handshake never completes")
    except BaseException:
        res.close()
        raise


def _drop_synack_filter() -> bytes:
    """A classic BPF socket filter that drops TCP segments with SYN and ACK
    both set and accepts the rest.  A TCP socket filter sees the segment
    from its TCP header: byte 13 holds the flags."""
    return _sock_fprog([
        (0x30, 0, 0, 13),          # ldb [13]          TCP flags
        (0x54, 0, 0, 0x12),        # and #SYN|ACK
        (0x15, 0, 1, 0x12),        # jeq #SYN|ACK, drop, accept
        (0x06, 0, 0, 0),           # drop: ret #0
        (0x06, 0, 0, 0xFFFFFFFF),  # accept: ret #-1
    ])


def _helper_main() -> None:
    """Entry point of the ``unshare -Urn`` helper (argv: channel fd,
    family, timeout).  Builds a SYN_RCVD socket by simultaneous open,
    sends its descriptor and a JSON report back, then waits for EOF."""
    fam_num, timeout = int(sys.argv[2]), float(sys.argv[3])
    chan, fail, up = _helper_start()
    fam = socket.AddressFamily(fam_num)
    host = loopback_host(fam)
    sock: Optional[socket.socket] = None

    try:
        if not up:
            return
        sock = socket.socket(fam, socket.SOCK_STREAM)
        deadline = time.perf_counter() + timeout
        while True:  # ::1 appears on lo a moment after it is up
            try:
                sock.bind((host, 0))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL or time.perf_counter() > deadline:
                    raise
                time.sleep(0.001)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _drop_synack_filter())
        except OSError as exc:
            return fail("unavailable", f"SO_ATTACH_FILTER on a TCP socket: {exc}",
                        exc.errno or 0)
        local = _name(sock)
        sock.setblocking(False)
        t0 = time.perf_counter()
        # connect to our own port: our SYN comes back to us (simultaneous
        # open) -> SYN_RECV, and we answer with a SYN-ACK that the filter
        # drops on its way in; so the handshake never completes
        err = sock.connect_ex(local)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect: {os.strerror(err)}")
        try:
            _, dt = _wait(lambda: _fd_state(sock) if sock else TcpState.CLOSED,
                          lambda s: s is TcpState.SYN_RCVD, t0, timeout,
                          "SYN_RCVD (TCP_INFO state 3, on fd)",
                          lambda s: f"{s.name} by TCP_INFO")
        except Timeout as exc:
            return fail("timeout", str(exc))
        four = (*local, *local)
        e = _lookup(four)
        entry = None if e is None else {
            "family": int(e.family), "state": int(e.state), "local": list(e.local),
            "remote": list(e.remote), "inode": e.inode, "uid": e.uid, "timer": e.timer,
            "expires_s": e.expires_s, "retrans": e.retrans, "recv_q": e.recv_q,
            "send_q": e.send_q, "cookie": e.cookie, "ifindex": e.ifindex}
        report = {"elapsed_s": dt, "four": list(four), "entry": entry}
        socket.send_fds(chan, [json.dumps(report).encode()], [sock.fileno()])
        while chan.recv(1):  # hold until the parent closes the channel
            pass
    except Exception as exc:  # report anything else; the parent raises it
        fail("unavailable", f"{type(exc).__name__}: {exc}",
             getattr(exc, "errno", 0) or 0)
    finally:
        if sock is not None:
            _abort(sock)
            sock.close()
        chan.close()
