"""Command line: ``python -m pysockkit {tour,serve,ping,ss,watch}``.

Bad input is one line on stderr and exit code 2 (usage) or 1 (a runtime
failure: a busy port, an unknown host, no server); never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import signal
import socket
import sys
import time
from typing import Any, Callable, NoReturn, Optional, Sequence

from ._net import FORMS, Address, check_timeout, format_address, parse_address

_PROG = "python -m pysockkit"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after every option that has a real default (a
    flag's False or a None that the help text explains is left out)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the usage text
    is one ``--help`` away) and whose help shows every default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")


def _parse_address(text: str, default_host: str) -> Address:
    """parse_address for argparse: its message, without the argument name
    (argparse puts "argument HOST:PORT:" first) and in the CLI's terms."""
    try:
        return parse_address(text, name="-", default_host=default_host)
    except (TypeError, ValueError) as exc:
        msg = str(exc).removeprefix("-: ").replace(FORMS, "HOST:PORT or [V6]:PORT")
        raise argparse.ArgumentTypeError(msg) from None


def _addr(text: str) -> Address:
    """HOST:PORT, [V6]:PORT or :PORT (host 127.0.0.1)."""
    return _parse_address(text, "127.0.0.1")


def _number(what: str, convert: Callable[[str], Any], low: float,
            high: Optional[float] = None, above_low: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number in low..high (> low with above_low)."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not (low < value if above_low else low <= value) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


def _seconds(text: str) -> float:
    """A duration in seconds >= 0 (the one timeout rule: _net.check_timeout)."""
    try:
        value = check_timeout(float(text), allow_none=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds >= 0") from None
    return value


def _cmd_tour(args: argparse.Namespace) -> int:
    from . import _tour

    return _tour.run()


def _cmd_serve(args: argparse.Namespace) -> int:
    from ._serve import serve

    with serve(args.address) as srv:
        try:  # from the first line on, Ctrl-C is a clean stop
            print(f"echo server on {format_address(srv.address)}; Ctrl-C stops it", flush=True)
            signal.pause() if args.seconds is None else time.sleep(args.seconds)
        except KeyboardInterrupt:
            pass
        print(f"served {srv.served} messages")
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    from ._conn import connect

    with connect(args.address, timeout=args.timeout) as conn:
        rtts = []
        for i in range(args.count):
            t0 = time.perf_counter()
            conn.request(b"ping %d" % i, timeout=args.timeout)
            rtts.append((time.perf_counter() - t0) * 1e6)
    rtts.sort()
    print(f"{len(rtts)} requests to {format_address(args.address)}: "
          f"min {rtts[0]:.1f} us, median {rtts[len(rtts) // 2]:.1f} us, max {rtts[-1]:.1f} us")
    return 0


# ------------------------------------------------------------------ ss

_SS_INFO_HELP = (
    "tcp_info fields on a second line, as `ss -tani`: rto, rtt/rttvar (ms), "
    "mss, cwnd, ssthresh, bytes sent/acked/received, segments, last send/"
    "receive/ack (ms ago), pacing and delivery rates, retransmits, unacked; "
    "and the timer (TIME_WAIT countdown, retransmit, keepalive, probe)")


def _ss_info_line(e: Any) -> str:
    """The indented `ss -i`-like detail line of one SocketEntry."""
    parts: list[str] = []
    if e.timer != "none":
        parts.append(f"timer:({e.timer},{e.expires_s:.3f}s,{e.retrans})")
    ti = e.info
    if ti is not None and e.state.name != "LISTEN":
        def ms(us: Optional[int]) -> str:
            return "-" if us is None else f"{us / 1000:g}"

        def put(name: str, value: Any, fmt: str = "{}") -> None:
            if value is not None:
                parts.append(f"{name}:{fmt.format(value)}")

        if ti.options is not None:
            names = [n for n in ti.option_names if n in ("ts", "timestamps", "sack")]
            if "wscale" in ti.option_names or ti.snd_wscale:
                names.append(f"wscale:{ti.snd_wscale},{ti.rcv_wscale}")
            parts.extend(names)
        put("rto", None if ti.rto_us is None else ms(ti.rto_us))
        if ti.rtt_us is not None:
            parts.append(f"rtt:{ms(ti.rtt_us)}/{ms(ti.rttvar_us)}")
        put("ato", None if ti.ato_us is None else ms(ti.ato_us))
        put("mss", ti.snd_mss_bytes)
        put("pmtu", ti.pmtu_bytes)
        put("rcvmss", ti.rcv_mss_bytes)
        put("advmss", ti.advmss_bytes)
        put("cwnd", ti.snd_cwnd_segs)
        if ti.snd_ssthresh_segs is not None and ti.snd_ssthresh_segs < 0xFFFF:
            put("ssthresh", ti.snd_ssthresh_segs)
        put("bytes_sent", ti.bytes_sent)
        put("bytes_acked", ti.bytes_acked)
        put("bytes_received", ti.bytes_received)
        put("segs_out", ti.segs_out)
        put("segs_in", ti.segs_in)
        put("data_segs_out", ti.data_segs_out)
        put("data_segs_in", ti.data_segs_in)
        put("lastsnd", ti.last_data_sent_ms)
        put("lastrcv", ti.last_data_recv_ms)
        put("lastack", ti.last_ack_recv_ms)
        if ti.pacing_rate_Bps is not None and ti.pacing_rate_Bps < 2**63:
            parts.append(f"pacing_rate {_bps(ti.pacing_rate_Bps)}")
        if ti.delivery_rate_Bps:
            parts.append(f"delivery_rate {_bps(ti.delivery_rate_Bps)}")
        if ti.unacked_segs:
            put("unacked", ti.unacked_segs)
        if ti.total_retrans_segs:
            put("retrans", f"{ti.retransmits}/{ti.total_retrans_segs}")
        put("rcv_space", ti.rcv_space_bytes)
        put("rcv_ssthresh", ti.rcv_ssthresh_bytes)
        put("minrtt", None if ti.min_rtt_us is None else ms(ti.min_rtt_us))
        put("snd_wnd", ti.snd_wnd_bytes)
    return "\t " + " ".join(parts) if parts else ""


def _bps(bytes_per_s: int) -> str:
    bits = bytes_per_s * 8.0
    for unit, scale in (("Gbps", 1e9), ("Mbps", 1e6), ("Kbps", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.1f}{unit}"
    return f"{bits:.0f}bps"


def _cmd_ss(args: argparse.Namespace) -> int:
    from ._enums import TcpState
    from ._observe import sockets

    states = None if not args.state or "all" in [s.lower() for s in args.state] else [
        TcpState.from_name(s) for s in args.state]
    family = 4 if args.ipv4 else (6 if args.ipv6 else None)
    found = sockets(state=states, port=args.port, family=family, info=args.info)
    lines = str(found).splitlines()
    out = lines[:1]
    for line, e in zip(lines[1:], found):
        out.append(line)
        detail = _ss_info_line(e) if args.info else ""
        if detail:
            out.append(detail)
    print("\n".join(out))
    return 0


# --------------------------------------------------------------- watch


def _watch_target(text: str) -> tuple[Optional[str], int]:
    """HOST:PORT for `watch`: HOST may be empty or '*' (any address)."""
    any_host = text.strip().startswith("*:")
    host, port = _parse_address(text.strip()[1:] if any_host else text, "")
    if host == "":
        return None, port
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0]), port
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {exc}") from None


def _same_host(a: str, b: Optional[str]) -> bool:
    if b is None:
        return True
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped is not None:
        y = y.ipv4_mapped
    return x == y or x.is_unspecified


def _cmd_watch(args: argparse.Namespace) -> int:
    from ._enums import TcpState
    from ._observe import sockets

    host, port = args.target
    where = format_address(("*" if host is None else host, port))
    limit = "until Ctrl-C" if args.seconds is None else f"for {args.seconds:g} s"
    print(f"watching TCP sockets on {where} {limit}, sampling every "
          f"{args.interval * 1e3:g} ms", flush=True)
    # key: (local, remote) -> (state, cookie)
    seen: dict[tuple[tuple[str, int], tuple[str, int]], tuple[TcpState, int]] = {}
    t0 = time.monotonic()
    end = None if args.seconds is None else t0 + args.seconds
    first = True
    changes = 0

    def show(t: float, local: tuple[str, int], remote: tuple[str, int], what: str) -> None:
        peer = "*" if remote[1] == 0 else format_address(remote)
        print(f"{t * 1e3:11.3f} ms  {format_address(local):>24} -> {peer:<24} {what}",
              flush=True)

    try:
        while True:
            now = time.monotonic()
            cur: dict[tuple[tuple[str, int], tuple[str, int]], tuple[TcpState, int]] = {}
            for e in sockets(port=port):
                if (e.local[1] == port and _same_host(e.local[0], host)) or (
                        e.remote[1] == port and _same_host(e.remote[0], host)
                        and not ipaddress.ip_address(e.remote[0]).is_unspecified):
                    cur[(e.local, e.remote)] = (e.state, e.cookie)
            t = now - t0
            for key, (state, cookie) in cur.items():
                old = seen.get(key)
                if old is None or old[1] != cookie:
                    what = state.name if first else f"new: {state.name}"
                    show(t, *key, what)
                    changes += 0 if first else 1
                elif old[0] is not state:
                    show(t, *key, f"{old[0].name} -> {state.name}")
                    changes += 1
            for key, (state, _) in seen.items():
                if key not in cur:
                    show(t, *key, f"{state.name} -> CLOSED (gone)")
                    changes += 1
            seen = cur
            first = False
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(args.interval if end is None
                       else max(0.0, min(args.interval, end - time.monotonic())))
    except KeyboardInterrupt:
        pass
    print(f"{changes} change{'s' if changes != 1 else ''} in "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pysockkit``: the exit code (0 ok, 1 a
    runtime failure, 2 bad usage, 130 Ctrl-C).

    Example::

        >>> main(["ping", "127.0.0.1:9"])       # nothing listens there
        1
    """
    p = _Parser(prog=_PROG, description="framed TCP toolkit")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("tour", help="guided run on loopback showing every feature")
    s.set_defaults(func=_cmd_tour)
    s = sub.add_parser("serve", help="run an echo server")
    s.add_argument("address", type=_addr, nargs="?", default="127.0.0.1:9000",
                   metavar="HOST:PORT",
                   help="where to listen ([::1]:PORT for IPv6, :PORT for 127.0.0.1, "
                   "port 0 for a free one)")
    s.add_argument("--seconds", type=_seconds, default=None,
                   help="stop after this long (default: until Ctrl-C)")
    s.set_defaults(func=_cmd_serve)
    s = sub.add_parser("ping", help="send framed requests to an echo server, print round trips")
    s.add_argument("address", type=_addr, metavar="HOST:PORT",
                   help="the echo server ([::1]:PORT for IPv6)")
    s.add_argument("-n", "--count", type=_number("a whole number >= 1", int, 1), default=10,
                   help="requests to send")
    s.add_argument("--timeout", type=_seconds, default=2.0,
                   help="seconds to wait for the connect and for each reply")
    s.set_defaults(func=_cmd_ping)
    s = sub.add_parser("ss", help="list TCP sockets like `ss -tan` (sock_diag)",
                       description="List the TCP sockets of this network namespace, "
                       "like `ss -tan`, TIME_WAIT and request sockets included.")
    s.add_argument("-s", "--state", action="append", metavar="STATE",
                   help="only this state (repeatable): ESTABLISHED, time-wait, LISTEN, ... "
                   "or 'all' (default: all)")
    s.add_argument("-p", "--port", type=_number("a port number (0..65535)", int, 0, 65535),
                   default=None,
                   help="only sockets with this port on either side (default: any)")
    fam = s.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="ipv4", action="store_true", help="IPv4 only")
    fam.add_argument("-6", dest="ipv6", action="store_true", help="IPv6 only")
    s.add_argument("-i", "--info", action="store_true", help=_SS_INFO_HELP)
    s.set_defaults(func=_cmd_ss)
    s = sub.add_parser("watch", help="print state changes of the TCP sockets on HOST:PORT",
                       description="Watch the TCP connections to or from HOST:PORT "
                       "(sock_diag) and print every state change as it happens.")
    s.add_argument("target", type=_watch_target, metavar="HOST:PORT",
                   help="address and port; HOST may be * for any address")
    s.add_argument("--seconds", type=_seconds, default=None,
                   help="stop after this long (default: until Ctrl-C)")
    s.add_argument("--interval", default=0.002, help="seconds between two looks",
                   type=_number("a number of seconds in (0, 3600]", float, 0, 3600,
                                above_low=True))
    s.set_defaults(func=_cmd_watch)
    _add_lab(sub)
    args = p.parse_args(argv)
    where = f"{_PROG} {args.cmd}"
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # bad input found past parsing (a state name, ...)
        print(f"{where}: error: {_one_line(exc)} (see {where} --help)", file=sys.stderr)
        return 2
    except OSError as exc:  # sk.Error included: a busy port, no server, no such host
        print(f"{where}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The message of exc on one line (an OSError without its "[Errno N]")."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


# ----------------------------------------------------------------- lab


def _cmd_lab(args: argparse.Namespace) -> int:
    from . import lab

    if not args.names:
        print(lab.conversations())
        return 0
    for k, name in enumerate(args.names):
        try:
            rec = lab.conversation(name, family="ipv6" if args.ipv6 else "ipv4")
        except ValueError as exc:
            print(f"lab: {exc}", file=sys.stderr)
            return 2
        except lab.LabUnavailable as exc:
            print(f"lab: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if k:
            print()
        print(rec.ladder(args.numbers))
        if args.table:
            print()
            print(rec.table())
        if args.svg:
            path = args.svg if len(args.names) == 1 else f"{name}-{args.svg}"
            rec.save(path)
            print(f"(SVG ladder written to {path})")
    return 0


def _add_lab(sub: Any) -> None:
    """The ``lab`` subcommand (its parser)."""
    s = sub.add_parser("lab", help="play a TCP scenario on a private loopback and print its "
                       "ladder (segments and states)",
                       description="Play a scenario (handshake, close, lost-last-ack, ...) in a "
                       "private network namespace, unprivileged, and print every segment "
                       "beside both ends' states.  No NAME: list the scenarios.")
    s.add_argument("names", nargs="*", metavar="NAME", help="scenario(s) to play")
    s.add_argument("-6", dest="ipv6", action="store_true", help="over ::1 instead of 127.0.0.1")
    s.add_argument("--numbers", choices=("relative", "absolute", "symbolic"),
                   default="relative", help="how seq/ack are shown (default relative)")
    s.add_argument("--table", action="store_true", help="also print one row per segment")
    s.add_argument("--svg", metavar="FILE", help="also write the SVG ladder to FILE")
    s.set_defaults(func=_cmd_lab)


if __name__ == "__main__":
    raise SystemExit(main())
