"""Link: faults below TCP, which no proxy can make.

A :class:`Link` is a private network namespace (``unshare -Urn``, as
:mod:`pysockkit.lab` uses: unprivileged, root only inside it) whose
loopback carries the traffic between two hosts, ``Link.A`` (127.0.0.1) and
``Link.B`` (127.0.0.2).  The test gets real sockets in that namespace
(``link.socket()``, ``link.listen()``, ``link.connect()``: a helper process
inside creates them and passes their descriptors back) and changes the
link under them at the IP layer, so the kernel's TCP does what it does on a
bad network: real retransmissions, real RTO backoff.

What the link can do, and how (measured on this project's CI kernel):

- ``loss``: the probability that a packet is dropped, each way (an
  nftables rule, ``numgen random``): TCP retransmits;
- ``cut``: every packet dropped (nftables): retransmissions with
  exponential RTO backoff until the link is back, or the kernel gives up;
- ``rate``: bytes per second through the link (a ``tbf`` qdisc on lo).

lo's MTU in the namespace is ``mtu`` (1500 by default) and its GSO is off,
so every packet is one Ethernet-sized segment and a loss is one segment's.

Delay, reordering and duplication need ``tc qdisc ... netem``, and the
kernels this project runs on have no ``sch_netem`` ("Specified qdisc kind
is unknown" even as root in the namespace): :meth:`Link.set` raises
:class:`~pysockkit.lab.LabUnavailable` for those; use
:class:`~pysockkit.FaultProxy` latency for delay above TCP.

Example::

    from pysockkit.testing import Link

    with Link() as link:
        srv = link.listen()
        cli = link.connect(srv.getsockname())
        peer, _ = srv.accept()
        link.set(loss=0.2)
        cli.sendall(bytes(200_000))          # arrives, retransmitted
        ...
        print(sk.tcp_info(cli).total_retrans)
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import socket as _socket
import subprocess
import sys
from typing import Any, Optional

from .._errors import Error

__all__ = ["Link"]

_TABLE = "sk_link"


class Link:
    """Two loopback hosts in a private network namespace with faults at
    the IP layer (see the module documentation).  ``mtu`` is lo's MTU in
    the namespace; ``timeout`` bounds each request to the helper.  Raises
    :class:`~pysockkit.lab.LabUnavailable` where unprivileged user
    namespaces, ``ip``, ``nft`` or ``tc`` are missing.  Close it (or use
    ``with``): the namespace, and every socket in it, goes with the helper.

    Example::

        >>> from pysockkit.testing import Link
        >>> with Link() as link:
        ...     link.set(loss=0.05)
        ...     link.faults
        {'loss': 0.05, 'cut': False, 'rate': None}
    """

    A = "127.0.0.1"
    B = "127.0.0.2"

    def __init__(self, *, mtu: int = 1500, timeout: float = 10.0,
                 unshare: str = "unshare") -> None:
        from .. import lab
        from ..lab import _netns

        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65536:
            raise ValueError(f"mtu must be an int 576..65536, not {mtu!r}")
        self._timeout = timeout
        self._faults: dict[str, Any] = {"loss": 0.0, "cut": False, "rate": None}
        self._res, msg, _ = _netns._netns_helper(
            "pysockkit.testing.link:_helper_main", [str(mtu)],
            "a Link needs `unshare -Urn` (unprivileged user namespaces)", timeout, unshare)
        report = json.loads(msg)
        if "error" in report:
            self._res.close()
            raise lab.LabUnavailable(report.get("errno") or 1, report["error"])

    # ------------------------------------------------------------ sockets

    def _ask(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        chan = self._res.channel
        if chan is None:
            raise Error("this Link was closed; make a new one")
        chan.settimeout(self._timeout)
        chan.send(json.dumps(req).encode())
        msg, fds, _, _ = socket.recv_fds(chan, 65536, 1)
        if not msg:
            raise Error("the Link's namespace helper exited; make a new Link")
        out: dict[str, Any] = json.loads(msg)
        if "error" in out:
            for fd in fds:
                socket.close(fd)
            raise Error(out.get("errno") or 0, f"Link: {out['error']}")
        return out, list(fds)

    def socket(self, family: socket.AddressFamily = socket.AF_INET) -> "_socket.socket":
        """A new TCP socket that lives in the link's namespace (yours to
        close).

        Example::

            s = link.socket()
            s.connect((link.B, port))
        """
        _, fds = self._ask({"op": "socket", "family": int(family)})
        return socket.socket(fileno=fds[0])

    def listen(self, host: str = B, port: int = 0, backlog: int = 16) -> _socket.socket:
        """A listening socket on host B (by default) in the namespace.

        Example::

            srv = link.listen()
            srv.getsockname()        # ('127.0.0.2', 40001)
        """
        s = self.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(backlog)
        except BaseException:
            s.close()
            raise
        return s

    def connect(self, address: tuple[str, int], host: str = A,
                timeout: Optional[float] = 10.0) -> _socket.socket:
        """A socket on host A (by default) connected to ``address`` in the
        namespace.

        Example::

            cli = link.connect(srv.getsockname())
        """
        s = self.socket()
        try:
            s.settimeout(timeout)
            s.bind((host, 0))
            s.connect(address)
        except BaseException:
            s.close()
            raise
        return s

    # ------------------------------------------------------------ faults

    @property
    def faults(self) -> dict[str, Any]:
        """The link's faults now: ``loss`` (0..1), ``cut``, ``rate``
        (bytes/s or None)."""
        return dict(self._faults)

    def set(self, *, loss: Optional[float] = None, cut: Optional[bool] = None,
            rate: Optional[float] = None, no_rate: bool = False,
            delay: Optional[float] = None, reorder: Optional[float] = None,
            duplicate: Optional[float] = None) -> None:
        """Change the link: ``loss`` (probability per packet, each way),
        ``cut`` (drop everything), ``rate`` (bytes/s; ``no_rate=True``
        removes it).  Parameters left out keep their value.  ``delay``,
        ``reorder`` and ``duplicate`` need netem, which these kernels lack:
        LabUnavailable.

        Example::

            link.set(loss=0.1)       # 10 % of packets dropped
            link.set(cut=True)       # nothing passes: RTO backoff
            link.set(loss=0, cut=False, no_rate=True)   # a clean link
        """
        from .. import lab

        for name, value in (("delay", delay), ("reorder", reorder), ("duplicate", duplicate)):
            if value is not None:
                raise lab.LabUnavailable(
                    95, f"Link {name} needs tc netem, and this kernel has no sch_netem; "
                    "use loss/cut/rate here, or FaultProxy latency for delay above TCP")
        new = dict(self._faults)
        if loss is not None:
            if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not 0 <= loss <= 1:
                raise ValueError(f"loss is a probability 0..1, not {loss!r}")
            new["loss"] = float(loss)
        if cut is not None:
            new["cut"] = bool(cut)
        if no_rate:
            new["rate"] = None
        elif rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                    or not math.isfinite(rate) or rate < 1000:
                raise ValueError(f"rate is in bytes/s, at least 1000, not {rate!r}")
            new["rate"] = float(rate)
        self._ask({"op": "faults", **new})
        self._faults = new

    def clear(self) -> None:
        """A clean link again."""
        self.set(loss=0, cut=False, no_rate=True)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """End the namespace helper; the namespace (and any socket in it
        that is still open) goes when its last socket closes.

        Example::

            link.close()
        """
        self._res.close()

    @property
    def closed(self) -> bool:
        return self._res.channel is None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pysockkit.testing.Link {self.A} <-> {self.B} {self._faults}>"


# ------------------------------------------------------------ the helper


def _nft_script(f: dict[str, Any]) -> str:
    """The nftables rules for faults f: one table, replaced as a whole."""
    rules = []
    if f.get("cut"):
        rules.append("drop")
    elif f.get("loss"):
        # per million; input hook: a dropped packet left its sender (which
        # therefore retransmits, as after a loss on a wire); a drop on the
        # output hook is a local send failure instead (TCP's probe timer)
        rules.append(f"numgen random mod 1000000 < {int(round(f['loss'] * 1e6))} drop")
    body = "".join(f"    {r}\n" for r in rules)
    return (f"table inet {_TABLE}\ndelete table inet {_TABLE}\n"
            f"table inet {_TABLE} {{\n  chain in {{\n"
            f"    type filter hook input priority 0; policy accept;\n{body}  }}\n}}\n")


def _run(*cmd: str, stdin: Optional[str] = None) -> None:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(2, f"{cmd[0]} is not installed (iproute2 / nftables)")
    r = subprocess.run([exe, *cmd[1:]], input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise OSError(1, f"{' '.join(cmd)}: {r.stderr.strip()}")


def _helper_main() -> None:
    """Entry point of the ``unshare -Urn`` helper (argv: channel fd, mtu):
    brings lo up with that MTU, reports, then serves requests (a socket,
    a fault change) until the channel closes."""
    from ..lab import _netns

    chan, fail, up = _netns._helper_start()
    if not up:
        return
    try:
        _run("ip", "link", "set", "lo", "mtu", sys.argv[2])
        # one segment per packet (lo would hand TCP's 64 KiB GSO packets
        # through whole): a loss is then one segment's, as on a wire
        try:
            _run("ip", "link", "set", "lo", "gso_max_segs", "1", "gso_max_size", sys.argv[2])
        except OSError:
            pass  # an older iproute2 or kernel: losses hit several segments
        _run("nft", "-f", "-", stdin=_nft_script({}))
    except OSError as exc:
        fail("unavailable", f"Link set-up: {exc}", exc.errno or 0)
        return
    chan.send(json.dumps({"ok": True}).encode())
    while True:
        msg = chan.recv(65536)
        if not msg:
            break
        req = json.loads(msg)
        try:
            if req["op"] == "socket":
                s = socket.socket(req["family"], socket.SOCK_STREAM)
                socket.send_fds(chan, [b'{"ok": true}'], [s.fileno()])
                s.close()
                continue
            _run("nft", "-f", "-", stdin=_nft_script(req))
            if req.get("rate"):
                rate_bits = int(req["rate"] * 8)
                _run("tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate",
                     f"{rate_bits}bit", "burst", "64kb", "latency", "200ms")
            else:
                subprocess.run([shutil.which("tc") or "tc", "qdisc", "del", "dev", "lo", "root"],
                               capture_output=True, timeout=30)
            chan.send(b'{"ok": true}')
        except OSError as exc:
            chan.send(json.dumps({"error": str(exc), "errno": exc.errno or 0}).encode())
