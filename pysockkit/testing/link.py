"""Link: faults below TCP, which no proxy can make.

A :class:`Link` is a private network namespace (``unshare -Urn``, as
:mod:`pysockkit.lab` uses: unprivileged, root only inside it) whose
loopback carries the traffic between two hosts, ``Link.A`` (127.0.0.1) and
``Link.B`` (127.0.0.2).  The test gets real sockets in that namespace
(``link.socket()``, ``link.listen()``, ``link.connect()``: a helper process
inside creates them and passes their descriptors back) and changes the
link under them at the IP layer, so the kernel's TCP does what it does on a
bad network: real retransmissions, real RTO backoff.

What the link can do, and how (measured on this project's CI kernel, which
has no ``sch_netem``: "Specified qdisc kind is unknown" even as root in the
namespace, so ``tc ... netem`` is out; what it has is nftables, iptables'
NFQUEUE target and nfnetlink_queue):

- ``loss``: the probability that a packet is dropped, each way (an
  nftables rule, ``numgen random``): TCP retransmits;
- ``cut``: every packet dropped (nftables): retransmissions with
  exponential RTO backoff until the link is back, or the kernel gives up;
- ``rate``: bytes per second through the link (a ``tbf`` qdisc on lo);
- ``delay`` and ``jitter``: an iptables ``NFQUEUE --queue-bypass`` rule on
  the input hook hands every packet to a queue whose handler, C in a thread
  of the namespace helper (``csrc/testkit/nfq.c``), accepts it at its due
  time: arrival + delay + uniform(-jitter, +jitter).  Both directions cross
  the input hook, so a round trip takes ``2 * delay``, as with netem on lo.
  Packets leave at or after their due time, never before; how late is in
  :meth:`Link.stats` (on the loaded 2-core CI box, at nice 19: 0.13 to
  0.4 ms on average, with rare outliers of tens of ms, nearly all of it
  the handler thread waiting for a core: docs/testing.md has the figures);
- ``reorder``: that share of packets is accepted at once instead of
  waiting ``delay``, so it overtakes the held ones (netem's reorder);
- ``duplicate``: an nftables ``dup to "lo"`` on lo's ingress sends a copy
  of that share of packets round again; the pair is marked so a copy is
  never copied;
- ``limit``: packets held at once (1000, netem's default); the kernel
  drops the ones beyond it, counted in :meth:`Link.stats`.

lo's MTU in the namespace is ``mtu`` (1500 by default) and its GSO is off,
so every packet is one Ethernet-sized segment and a loss is one segment's.
On ``close()`` the handler lets what it holds go and unbinds; if the
helper is killed, the kernel drops what it held (TCP retransmits); either
way the rule's bypass lets packets through after: traffic is never stuck.

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
import os
import re
import shutil
import socket
import socket as _socket
import subprocess
import sys
from typing import Any, Optional

from .._errors import Error

__all__ = ["Link"]

_TABLE = "sk_link"
_DUP_MARK = 0x736B  # "sk": a duplicated packet and its copy


class Link:
    """Two loopback hosts in a private network namespace with faults at
    the IP layer (see the module documentation).  ``mtu`` is lo's MTU in
    the namespace; ``timeout`` bounds each request to the helper.  Raises
    :class:`~pysockkit.lab.LabUnavailable` where unprivileged user
    namespaces, ``ip``, ``nft`` or ``tc`` are missing (and :meth:`set`
    does, for a delay, where ``iptables`` is).  Close it (or use
    ``with``): the namespace, and every socket in it, goes with the helper.

    Example::

        >>> from pysockkit.testing import Link
        >>> with Link() as link:
        ...     link.set(loss=0.05, delay=0.01)
        ...     link.faults["loss"], link.faults["delay"], link.faults["limit"]
        (0.05, 0.01, 1000)
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
        self._faults: dict[str, Any] = {"loss": 0.0, "cut": False, "rate": None, "delay": 0.0,
                                        "jitter": 0.0, "reorder": 0.0, "duplicate": 0.0,
                                        "limit": _LIMIT}
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
            if out.get("missing"):  # a tool the fault needs is not installed
                from .. import lab

                raise lab.LabUnavailable(out.get("errno") or 2, f"Link: {out['error']}")
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
        (bytes/s or None), ``delay`` and ``jitter`` (s), ``reorder`` and
        ``duplicate`` (0..1), ``limit`` (packets held at most)."""
        return dict(self._faults)

    def set(self, *, loss: Optional[float] = None, cut: Optional[bool] = None,
            rate: Optional[float] = None, no_rate: bool = False,
            delay: Optional[float] = None, jitter: Optional[float] = None,
            reorder: Optional[float] = None, duplicate: Optional[float] = None,
            limit: Optional[int] = None) -> None:
        """Change the link; parameters left out keep their value.  Times
        are in seconds, probabilities 0..1, and each applies to every
        packet on the input hook, so each way (as netem on lo would):

        - ``loss``: probability that a packet is dropped;
        - ``cut``: drop everything;
        - ``rate``: bytes/s on the wire (``no_rate=True`` removes it);
        - ``delay``, ``jitter``: each packet is held ``delay`` plus a
          uniform random ``-jitter..+jitter`` (at least 0), so a round trip
          takes about ``2 * delay``; with jitter, packets pass each other;
        - ``reorder``: probability that a packet goes at once instead of
          waiting ``delay`` (so it overtakes the ones held); needs a delay;
        - ``duplicate``: probability that a packet is delivered twice.

        At most ``limit`` packets are held at once (1000 by default, as
        netem's limit): the ones beyond are dropped, and counted in
        :meth:`stats`.

        Example::

            link.set(loss=0.1)       # 10 % of packets dropped
            link.set(cut=True)       # nothing passes: RTO backoff
            link.set(cut=False, delay=0.02, jitter=0.005)   # RTT about 40 ms
            link.set(reorder=0.25, duplicate=0.01)
            link.clear()             # a clean link
        """
        new = dict(self._faults)
        for name, value in (("loss", loss), ("reorder", reorder), ("duplicate", duplicate)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not 0 <= value <= 1:
                    raise ValueError(f"{name} is a probability 0..1, not {value!r}")
                new[name] = float(value)
        for name, value in (("delay", delay), ("jitter", jitter)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not 0 <= value <= 60:
                    raise ValueError(f"{name} is in seconds, 0..60, not {value!r}")
                new[name] = float(value)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
                raise ValueError(f"limit is a number of packets, 1..100000, not {limit!r}")
            new["limit"] = limit
        if new["reorder"] and not new["delay"]:
            raise ValueError("reorder needs a delay (the reordered packets are the ones "
                             "that do not wait it): set delay= too")
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

    def stats(self) -> dict[str, int]:
        """What the delay queue and the duplication did so far: ``held``
        (packets delayed), ``passed`` (packets the queue let through at
        once: the reordered share), ``most_held`` (most held at once),
        ``waiting`` (held now), ``overflow`` (dropped beyond ``limit``),
        ``late_max_us`` and ``late_mean_us`` (how late after its due time
        a held packet left, at most and on average: the delay's
        precision), ``duplicated`` (copies made).

        Example::

            link.set(duplicate=0.5)
            ...
            link.stats()["duplicated"]      # about half the packets
        """
        out, _ = self._ask({"op": "stats"})
        stats: dict[str, int] = out["stats"]
        return stats

    def clear(self) -> None:
        """A clean link again."""
        self.set(loss=0, cut=False, no_rate=True, delay=0, jitter=0, reorder=0, duplicate=0)

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


def _share(p: float) -> str:
    """The nft condition that holds for a share p of packets (per million;
    nothing when p is 1: numgen's values stop at 999999)."""
    return "" if p >= 1 else f"numgen random mod 1000000 < {int(round(p * 1e6))} "


def _nft_script(f: dict[str, Any], dup_table: bool = False) -> str:
    """The nftables rules for faults f: a table replaced whole (loss and
    cut on the input hook), and one for duplication on lo's ingress, made
    only when f duplicates, deleted when *dup_table* says it exists and f
    does not (so a kernel without nftables' netdev family still has loss,
    cut, rate and delay)."""
    rules = []
    if f.get("cut"):
        rules.append("drop")
    elif f.get("loss"):
        # per million; input hook: a dropped packet left its sender (which
        # therefore retransmits, as after a loss on a wire); a drop on the
        # output hook is a local send failure instead (TCP's probe timer)
        rules.append(f"{_share(f['loss'])}drop")
    dup = ""
    if f.get("duplicate"):
        # the copy goes out of lo again and comes back in marked, so a copy
        # is never copied again (the mark is set before the dup: both have it)
        dup = (f"meta mark != {_DUP_MARK} {_share(f['duplicate'])}"
               f'meta mark set {_DUP_MARK} counter dup to "lo"')
    body = "".join(f"    {r}\n" for r in rules)
    script = (f"table inet {_TABLE}\ndelete table inet {_TABLE}\n"
              f"table inet {_TABLE} {{\n  chain in {{\n"
              f"    type filter hook input priority 0; policy accept;\n{body}  }}\n}}\n")
    if dup or dup_table:
        script += f"table netdev {_TABLE}\ndelete table netdev {_TABLE}\n"
    if dup:
        script += (f"table netdev {_TABLE} {{\n  chain in {{\n"
                   f'    type filter hook ingress device "lo" priority 0; policy accept;\n'
                   f"    {dup}\n  }}\n}}\n")
    return script


def _nfqueue_rule(on: bool) -> None:
    """Add (or remove) the iptables NFQUEUE rule on the input hook, IPv4 and
    IPv6.  ``--queue-bypass``: while no handler is bound, packets pass."""
    for cmd in ("iptables", "ip6tables"):
        _run(cmd, "-F", "INPUT")
        if on:
            _run(cmd, "-A", "INPUT", "-j", "NFQUEUE", "--queue-num", str(_QUEUE_NUM),
                 "--queue-bypass")


def _run(*cmd: str, stdin: Optional[str] = None) -> None:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise FileNotFoundError(2, f"{cmd[0]} is not installed (iproute2 / nftables / iptables)")
    r = subprocess.run([exe, *cmd[1:]], input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise OSError(1, f"{' '.join(cmd)}: {r.stderr.strip()}")


# ------------------------------------------------------------ the delay queue
#
# An iptables NFQUEUE rule (--queue-bypass) on the input hook hands every
# packet to nfnetlink_queue _QUEUE_NUM; the handler, C in a thread of the
# namespace helper (csrc/testkit/nfq.c, _core.NfQueue), gives each packet a
# due time (delay +- jitter, or now for the reordered share) and accepts it
# then, in due-time order: delay, jitter and reordering.

_QUEUE_NUM = 0
# netem's default limit: packets held at once; the kernel drops (and
# counts, /proc/net/netfilter/nfnetlink_queue) what comes beyond it
_LIMIT = 1000


def _queue_overflow() -> int:
    """Packets the kernel dropped for our queue: beyond its length cap, or
    for want of netlink buffer (/proc/net/netfilter/nfnetlink_queue: queue,
    portid, waiting, copy mode, copy range, queue_dropped, user_dropped,
    last id, 1).  0 while no handler is bound (no line)."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                v = [int(x) for x in line.split()]
                if v[0] == _QUEUE_NUM:
                    return v[5] + v[6]
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _helper_main() -> None:
    """Entry point of the ``unshare -Urn`` helper (argv: channel fd, mtu):
    brings lo up with that MTU, reports, then serves requests (a socket,
    a fault change) until the channel closes."""
    from .. import _core
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
    queue: Optional[_core.NfQueue] = None  # once a delay was asked for
    dup_total = 0
    dup_table = False  # the netdev table of the dup rule exists
    try:
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
                if req["op"] == "stats":
                    q = queue.stats() if queue is not None else {}
                    out = {"held": q.get("held", 0), "passed": q.get("passed", 0),
                           "most_held": q.get("most_held", 0),
                           "waiting": q.get("waiting", 0),
                           "overflow": _queue_overflow() + q.get("dropped", 0),
                           "late_max_us": q.get("late_max_ns", 0) // 1000,
                           "late_mean_us": q.get("late_total_ns", 0) // 1000
                           // max(1, q.get("released", 0)),
                           "duplicated": dup_total + (_dup_count() if dup_table else 0)}
                    chan.send(json.dumps({"ok": True, "stats": out}).encode())
                    continue
                delayed = bool(req.get("delay") or req.get("jitter"))
                limit = int(req.get("limit") or _LIMIT)
                if delayed and queue is None:
                    for cmd in ("iptables", "ip6tables"):  # before the queue binds
                        if shutil.which(cmd) is None:
                            raise FileNotFoundError(
                                2, f"{cmd} is not installed (Link's delay needs its "
                                "NFQUEUE target: apt-get install iptables)")
                    queue = _core.NfQueue(_QUEUE_NUM, limit, int.from_bytes(os.urandom(8), "big"))
                if queue is not None:  # iptables only once a delay was asked for
                    err = queue.stats()["error"]
                    if err:
                        raise OSError(err, "the delay queue's handler stopped: "
                                      f"{os.strerror(err)}; make a new Link")
                    queue.set(int(round(float(req.get("delay") or 0.0) * 1e9)),
                              int(round(float(req.get("jitter") or 0.0) * 1e9)),
                              int(round(float(req.get("reorder") or 0.0) * 1e6)), limit)
                    _nfqueue_rule(delayed)
                if dup_table:
                    dup_total += _dup_count()  # the rule's counter goes with its table
                _run("nft", "-f", "-", stdin=_nft_script(req, dup_table))
                dup_table = bool(req.get("duplicate"))
                if req.get("rate"):
                    rate_bits = int(req["rate"] * 8)
                    _run("tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate",
                         f"{rate_bits}bit", "burst", "64kb", "latency", "200ms")
                else:
                    subprocess.run([shutil.which("tc") or "tc", "qdisc", "del", "dev", "lo",
                                    "root"], capture_output=True, timeout=30)
                chan.send(b'{"ok": true}')
            except OSError as exc:
                chan.send(json.dumps({"error": str(exc), "errno": exc.errno or 0,
                                      "missing": isinstance(exc, FileNotFoundError)}).encode())
    finally:
        if queue is not None:
            queue.close()  # held packets pass; the rule's bypass does the rest


def _dup_count() -> int:
    """Packets duplicated so far (the dup rule's counter; 0 without one)."""
    exe = shutil.which("nft")
    if exe is None:
        return 0
    r = subprocess.run([exe, "list", "table", "netdev", _TABLE], capture_output=True,
                       text=True, timeout=30)
    m = re.search(r"counter packets (\d+)", r.stdout)
    return int(m.group(1)) if m else 0
