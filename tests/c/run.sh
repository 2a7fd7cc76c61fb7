#!/usr/bin/env bash
# run.sh - build and run the C core's standalone tests (no Python needed).
#
#   tests/c/run.sh [--valgrind] [-v] [FILTER...]
#
# Compiles every csrc/core/*.c and csrc/testkit/*.c (not the CPython
# binding, csrc/binding/) together with every tests/c/*.c, then runs the
# result:
#   1. plain build   (-O1 -g, warnings are errors)
#   2. sanitizers    (ASan + UBSan, leak detection on)
#   3. --valgrind:   the plain build under valgrind memcheck
# FILTER words select tests whose "<area>.<name>" contains one of them.
# Builds go to a temporary directory, never into the source tree.
# The last line is "N passed, M failed" summed over the runs; a build
# failure or a crash counts as a failure.  Exit status 1 on any failure.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1

use_valgrind=0
args=()
for a in "$@"; do
    case $a in
    --valgrind) use_valgrind=1 ;;
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) args+=("$a") ;;
    esac
done

CC=${CC:-cc}
CFLAGS=(-std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror
    -Wstrict-prototypes -Wwrite-strings -Icsrc)
SANFLAGS=(-fsanitize=address,undefined -fno-omit-frame-pointer
    -fno-sanitize-recover=all)
LIBS=(-pthread)

shopt -s nullglob
srcs=()
for f in csrc/core/*.c csrc/testkit/*.c; do # not csrc/binding/: Python.h
    srcs+=("$f")
done
tests=(tests/c/*.c)
if [ ${#tests[@]} -eq 0 ]; then
    echo "run.sh: no tests/c/*.c found" >&2
    exit 1
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/sk-ctest.XXXXXX") || exit 1
trap 'rm -rf "$out"' EXIT

total_pass=0
total_fail=0
status=0

jobs=$(nproc 2>/dev/null || echo 2)

# build VARIANT EXTRA-FLAGS... : compile every source to $out/VARIANT/*.o
# (in parallel, up to $jobs at once), then link $out/VARIANT/sk_ctest.
# Returns nonzero, with the compiler output in $out/VARIANT.build.log.
build() {
    local v=$1 src obj rc=0
    shift
    mkdir -p "$out/$v"
    for src in "${srcs[@]}" "${tests[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
            wait -n 2>/dev/null || true
        done
        obj="$out/$v/${src//\//_}.o"
        ("$CC" "${CFLAGS[@]}" "$@" -c "$src" -o "$obj" >"$obj.log" 2>&1 ||
            echo "$src" >>"$out/$v.failed") &
    done
    wait
    cat "$out/$v"/*.log >"$out/$v.build.log" 2>/dev/null
    if [ -s "$out/$v.failed" ]; then
        return 1
    fi
    "$CC" "${CFLAGS[@]}" "$@" -o "$out/$v/sk_ctest" "$out/$v"/*.o \
        "${LIBS[@]}" >>"$out/$v.build.log" 2>&1 || rc=1
    return $rc
}

# run LABEL CMD... : run a test binary, add its "N passed, M failed" line
run() {
    local label=$1 rc line p f
    shift
    echo "== $label: $*"
    "$@" "${args[@]+"${args[@]}"}" 2>&1 | tee "$out/$label.log"
    rc=${PIPESTATUS[0]}
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out/$label.log" | tail -n 1)
    if [ -n "$line" ]; then
        p=${line%% passed*}
        f=${line#*, }
        f=${f%% failed}
    else
        p=0
        f=0
    fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1 # crashed, sanitizer report, or valgrind error
    fi
    echo "== $label: exit $rc"
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    [ "$rc" -eq 0 ] || status=1
}

# One time scale for the whole suite: PYSOCKKIT_TIME_SCALE (>= 1, default 1;
# the pytest suite reads it too) multiplies every time upper bound of the C
# tests.  SK_TEST_TIME_SCALE, if set, still overrides it for this runner.
# Valgrind runs about 20 times slower again, so it gets 20 x that scale.
time_scale=${PYSOCKKIT_TIME_SCALE:-1}
valgrind_scale=${SK_TEST_TIME_SCALE:-$(awk -v s="$time_scale" 'BEGIN { print 20 * s }')}
export SK_TEST_TIME_SCALE=${SK_TEST_TIME_SCALE:-$time_scale}

t0=$(date +%s)
build plain
rc_plain=$?
build asan "${SANFLAGS[@]}"
rc_asan=$?

if [ $rc_plain -eq 0 ]; then
    run plain "$out/plain/sk_ctest"
else
    echo "== plain: BUILD FAILED"
    cat "$out/plain.build.log"
    total_fail=$((total_fail + 1))
    status=1
fi

# allocator_may_return_null: the tests ask for impossible sizes on purpose
# (the code must fail with -1/SK_E_NOMEM, not abort); ASan then prints a
# "failed to allocate" WARNING line, which is expected.
if [ $rc_asan -eq 0 ]; then
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        run sanitizers "$out/asan/sk_ctest"
else
    echo "== sanitizers: BUILD FAILED"
    cat "$out/asan.build.log"
    total_fail=$((total_fail + 1))
    status=1
fi

if [ $use_valgrind -eq 1 ]; then
    if ! command -v valgrind >/dev/null 2>&1; then
        echo "== valgrind: not installed"
        total_fail=$((total_fail + 1))
        status=1
    elif [ $rc_plain -eq 0 ]; then
        SK_TEST_TIME_SCALE=$valgrind_scale \
            SK_TEST_TIMEOUT=${SK_TEST_TIMEOUT:-300} \
            run valgrind valgrind -q --error-exitcode=1 --leak-check=full \
            "$out/plain/sk_ctest"
    fi
fi

echo "== total time $(($(date +%s) - t0)) s"
echo "$total_pass passed, $total_fail failed"
exit $status
