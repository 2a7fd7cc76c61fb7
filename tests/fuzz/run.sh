#!/usr/bin/env bash
# run.sh - build the libFuzzer harnesses and run each for a bounded time.
#
#   tests/fuzz/run.sh [SECONDS] [NAME...]
#
# SECONDS (default 120) is the total budget, split evenly across the
# harnesses run (NAME: fuzz_decoder, fuzz_diag, fuzz_corr, fuzz_send,
# fuzz_proxy, fuzz_capture; default every tests/fuzz/fuzz_*.c).  Each harness is built
# with clang -fsanitize=fuzzer,address,undefined (UB aborts) from
# tests/fuzz/NAME.c and every csrc/core/*.c and csrc/testkit/*.c (not the
# CPython binding; plus the link flags on its "FUZZ_LDFLAGS:" line, if any;
# without csrc/X.c when its "FUZZ_UNITY: X" line (X = testkit/proxy, say)
# says it includes that file; inputs up to its
# "FUZZ_MAXLEN:" or 8192 bytes), then run on a scratch
# copy of its seed corpus tests/fuzz/corpus/NAME/ (the committed corpus is
# never written).
#
# Environment:
#   FUZZ_RUNS=N     run exactly N executions per harness instead of SECONDS
#                   (the long runs of docs/reliability.md use 10000000)
#   FUZZ_ARGS=...   extra libFuzzer flags (e.g. "-jobs=2 -workers=2")
#   CC=clang        the compiler (clang with libFuzzer)
#
# A crash, a sanitizer report or a failed check stops that harness; the
# input is copied to tests/fuzz/artifacts/ and the exit status is 1.  The
# last lines give the executions, time and coverage per harness.  Builds
# go to a temporary directory.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1

budget=120
names=()
for a in "$@"; do
    case $a in
    -h | --help)
        sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    [0-9]*) budget=$a ;;
    *) names+=("$a") ;;
    esac
done
if [ ${#names[@]} -eq 0 ]; then
    for f in "$here"/fuzz_*.c; do
        names+=("$(basename "$f" .c)")
    done
fi

CC=${CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "run.sh: $CC not found (apt-get install clang)" >&2
    exit 1
fi
CFLAGS=(-std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Icsrc
    -fno-omit-frame-pointer -fno-sanitize-recover=all)
LIBFLAGS=(-fsanitize=fuzzer-no-link,address,undefined)
EXEFLAGS=(-fsanitize=fuzzer,address,undefined)

out=$(mktemp -d "${TMPDIR:-/tmp}/sk-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$out"' EXIT

# the C core and the test kit without the binding, compiled once for
# every harness; csrc/testkit/proxy.c -> $out/testkit_proxy.o
objs=()
pids=()
for f in csrc/core/*.c csrc/testkit/*.c; do
    rel=${f#csrc/}
    o="$out/${rel//\//_}"
    o="${o%.c}.o"
    "$CC" "${CFLAGS[@]}" "${LIBFLAGS[@]}" -c "$f" -o "$o" &
    pids+=($!)
    objs+=("$o")
done
for p in "${pids[@]}"; do
    wait "$p" || { echo "run.sh: building the core failed" >&2; exit 1; }
done

status=0
summary=()
per=$((budget / ${#names[@]}))
[ "$per" -ge 1 ] || per=1
for name in "${names[@]}"; do
    src="$here/$name.c"
    if [ ! -f "$src" ]; then
        echo "run.sh: no $src" >&2
        status=1
        continue
    fi
    # shellcheck disable=SC2207
    ldflags=($(sed -n 's/^ \* FUZZ_LDFLAGS: //p' "$src"))
    # a harness that includes csrc/X.c itself ("FUZZ_UNITY: X") links the
    # core without X.o
    unity=$(sed -n 's/^ \* FUZZ_UNITY: //p' "$src")
    # a harness whose inputs are programs may ask for shorter ones
    maxlen=$(sed -n 's/^ \* FUZZ_MAXLEN: //p' "$src")
    link=()
    for o in "${objs[@]}"; do
        [ -n "$unity" ] && [ "$o" = "$out/${unity//\//_}.o" ] && continue
        link+=("$o")
    done
    "$CC" "${CFLAGS[@]}" "${EXEFLAGS[@]}" "$src" "${link[@]}" -pthread \
        "${ldflags[@]}" -o "$out/$name" ||
        { echo "run.sh: building $name failed" >&2; status=1; continue; }
    work="$out/$name.corpus"
    mkdir -p "$work" "$out/$name.artifacts" "$here/corpus/$name"
    if [ -n "${FUZZ_RUNS:-}" ]; then
        limit=(-runs="$FUZZ_RUNS")
        what="$FUZZ_RUNS runs"
    else
        limit=(-max_total_time="$per")
        what="$per s"
    fi
    echo "== $name ($what)"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$out/$name" "${limit[@]}" -rss_limit_mb=2048 -max_len="${maxlen:-8192}" \
        -print_final_stats=1 -artifact_prefix="$out/$name.artifacts/" \
        ${FUZZ_ARGS:-} "$work" "$here/corpus/$name" >"$out/$name.log" 2>&1
    rc=$?
    execs=$(grep -h 'stat::number_of_executed_units' "$out/$name.log" "$out"/fuzz-*.log 2>/dev/null |
        awk '{s += $2} END {print s + 0}')
    cov=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$out/$name.log" | tail -n 1 |
        grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    if [ $rc -ne 0 ]; then
        tail -n 60 "$out/$name.log"
        mkdir -p "$here/artifacts"
        cp "$out/$name.artifacts"/* "$here/artifacts/" 2>/dev/null
        echo "== $name: FAILED (exit $rc); inputs in tests/fuzz/artifacts/;" \
            "reproduce: build as above, then ./$name tests/fuzz/artifacts/<file>"
        status=1
    else
        grep -E "^#[0-9]+[[:space:]]+DONE" "$out/$name.log" | tail -n 1
    fi
    summary+=("$name: $execs executions in $(($(date +%s) - t0)) s, $cov, exit $rc")
done

echo "== summary"
for s in "${summary[@]}"; do
    echo "$s"
done
exit $status
