#!/bin/bash
# profile_server.sh IMPL [N] - where one server of many.py spends its CPU under the many.py load.
#
#   bash bench/profile_server.sh sk 100      # sk.serve, 100 connections
#   bash bench/profile_server.sh c 100       # the C epoll echo server, the limit line
#
# IMPL: c, or a key of many_servers.py (sk, uvloop, asyncio, threading, aio).  The server runs
# on CPU 0, bench/loadgen.c on CPU 1 with N connections (one 64-byte request in flight on each).
# After 4 s of warm-up, `perf stat` counts the server's syscalls, context switches and CPU time
# per thread for 4 s, then `perf record -g` samples it for 4 s; the report gives requests/s,
# syscalls and context switches per request, and the share of the samples per library and
# per symbol.  Needs perf, taskset and cc; run it on a quiet machine.  Every process it starts
# is stopped by its pid; the perf data goes to a temporary directory, removed at the end.
set -u
IMPL=${1:?usage: profile_server.sh IMPL [N]}
N=${2:-100}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
tmp=$(mktemp -d) || exit 1
srv=""; lg=""
cleanup() {
    [ -n "$lg" ] && kill "$lg" 2>/dev/null
    [ -n "$srv" ] && kill -TERM "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
cc -O2 -Wall -Wextra -Werror -o "$tmp/loadgen" "$here/loadgen.c" || exit 1
if [ "$IMPL" = c ]; then
    cc -O2 -Wall -Wextra -Werror -o "$tmp/echo" "$here/echo_epoll.c" || exit 1
    taskset -c 0 "$tmp/echo" 4096 >"$tmp/srv.out" 2>&1 &
else
    taskset -c 0 "$PY" "$here/many_servers.py" "$IMPL" 4096 >"$tmp/srv.out" 2>&1 &
fi
srv=$!
for _ in $(seq 100); do grep -q READY "$tmp/srv.out" && break; sleep 0.1; done
port=$(awk '/READY/{print $2}' "$tmp/srv.out")
[ -n "$port" ] || { echo "the server did not start: $(cat "$tmp/srv.out")" >&2; exit 1; }
taskset -c 1 "$tmp/loadgen" load 127.0.0.1 "$port" "$N" 4 8 30 >"$tmp/lg.out" 2>&1 &
lg=$!
sleep 4
perf stat -e raw_syscalls:sys_enter,context-switches,task-clock --per-thread -p "$srv" \
    -o "$tmp/stat.txt" -- sleep 4 >/dev/null 2>&1
perf record -F 1999 -g -p "$srv" -o "$tmp/perf.data" -- sleep 3.5 >/dev/null 2>&1
wait "$lg"; lg=""
rps=$(grep -o '"rps":[0-9.]*' "$tmp/lg.out" | cut -d: -f2)
awk -v rps="$rps" -v impl="$IMPL" -v n="$N" '
    /raw_syscalls:sys_enter/ && $2 ~ /^[0-9]+$/ { sc += $2 }
    /context-switches/ && $2 ~ /^[0-9]+$/ { cs += $2 }
    / task-clock/ && $2 ~ /^[0-9.]+$/ { ms += $2 }
    END { req = rps * 4;
          printf "%s, %d connections: %.0f req/s (loadgen, whole window)\n", impl, n, rps;
          printf "per request over 4 s: %.2f syscalls, %.3f context switches, %.1f us CPU\n",
                 sc / req, cs / req, ms * 1000 / req }' "$tmp/stat.txt"
echo "--- share of the samples per library"
perf report -i "$tmp/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -6
echo "--- top symbols"
perf report -i "$tmp/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -25
echo "--- top user-space symbols (share of all samples)"
perf report -i "$tmp/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | grep -v 'kernel.kallsyms' | head -25
