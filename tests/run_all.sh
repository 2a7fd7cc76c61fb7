#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need,
# runs the README's first command and bench/README.md's commands as written
# there, each in a fresh clone and virtualenv (tests/docblocks.py),
# builds the extension with -Werror, runs the C test runner (plain, under
# ASan+UBSan and under valgrind memcheck), mypy, pytest against an editable
# install, the hardening checks (tests/run_hardening.sh: 120 s of libFuzzer
# over every tests/fuzz harness, then the whole pytest suite against an
# ASan+UBSan build of the extension), and the packaging tests against a wheel
# built from the sdist in a separate virtualenv.
#
# Usage: bash tests/run_all.sh        (the README's test command; .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PYTHON:-python3}
venv="$root/.venv"

t_start=$(date +%s)
step() { printf '\n=== [%4d s] %s\n' "$(($(date +%s) - t_start))" "$*"; }

step "system packages"
need=()
# the outside witness of the segment capture (tests/test_conversation.py)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v git >/dev/null 2>&1 || need+=(git)
# clang with its libFuzzer runtime (a Recommends of clang, which some
# images skip): the package is named after clang's major version
if ! command -v clang >/dev/null 2>&1; then
    need+=(clang)
elif [ ! -e "$(clang -print-runtime-dir)/libclang_rt.fuzzer-x86_64.a" ]; then
    need+=("libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev")
fi
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
# nft drops loopback packets inside `unshare -Urn` (tests/test_keepalive.py)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# NFQUEUE rules for Link's delay, jitter and reordering (tests/test_link.py)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# a real outside server behind the FaultProxy (tests/test_redis_proxy.py)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --install-recommends "${need[@]}"
    else
        echo "missing ${need[*]}: install them (sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

step "first contact: README.md's first command and bench/README.md's, verbatim, fresh clone and venv"
"$PY" tests/docblocks.py readme bench

step "virtualenv and Python packages"
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# the build tools here; the test dependencies (pyproject's [test] extra:
# pytest, mypy, hypothesis, the notebook kernel, matplotlib, uvloop,
# Twisted) come with the editable install below, so no test skips for a
# missing package
"$venv/bin/python" -m pip install -q setuptools wheel

step "C core: test runner, plain, under ASan+UBSan and under valgrind"
bash tests/c/run.sh --valgrind

step "extension build (-Werror) and editable install"
PYSOCKKIT_WERROR=1 "$venv/bin/python" -m pip install -q --no-build-isolation -e ".[test]"

step "mypy --strict"
"$venv/bin/python" -m mypy

step "pytest (editable install)"
"$venv/bin/python" -m pytest -q tests

step "hardening: bounded fuzzing, pytest against an ASan+UBSan build"
PYTHON="$venv/bin/python" bash tests/run_hardening.sh --no-valgrind

step "sdist: build, install into a clean virtualenv, run the packaging tests against it"
rm -rf dist
"$venv/bin/python" -m build --sdist -o dist . >/dev/null
sdist=$(ls dist/pysockkit-*.tar.gz)
tmp=$(mktemp -d)
chmod 755 "$tmp"   # the unprivileged tests run the installed package as `nobody`
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
# The URL carries the sdist's hash: pip caches the wheel it builds from a
# local archive under the archive's URL alone, so without the hash a later
# run at the same path (a CI clone) installed the wheel built from an older
# sdist (found 2026-12-06: CI's packaging tests ran a wheel from 10 commits
# before, and mypy there failed on Link.stats, added since).
sdist_sha=$(sha256sum "$sdist" | cut -d' ' -f1)
PYSOCKKIT_WERROR=1 "$tmp/venv/bin/python" -m pip install -q \
    "pysockkit[test] @ file://$root/$sdist#sha256=$sdist_sha"
# and say which build ran: the installed extension must be the one just built
"$tmp/venv/bin/python" -I - "$sdist_sha" <<'PYEOF'
import json, sys
from importlib.metadata import distribution
origin = json.loads(distribution("pysockkit").read_text("direct_url.json") or "{}")
got = origin.get("archive_info", {}).get("hashes", {}).get("sha256")
if got != sys.argv[1]:
    sys.exit(f"the sdist venv holds pysockkit from {origin!r}, not the sdist just built "
             f"(sha256 {sys.argv[1]}): clear pip's wheel cache (pip cache purge) and rerun")
print(f"sdist venv: pysockkit from the sdist just built (sha256 {got[:12]}...)")
PYEOF
tar -xzf "$sdist" -C "$tmp"
# run from the unpacked sdist's tests, outside any source tree, so that the
# installed package (not a source checkout) is what gets imported
# The whole suite ran against the editable install above (and again under
# the sanitizers); here the files that check what packaging can break: the
# extension built from the sdist alone, the stubs and py.typed, the pytest11
# entry point, the examples (which use each mode over real sockets), the
# docs' code, the notebook, the CLI and the codec.  The whole suite again
# would add about six minutes to a CI bound of 30.
sdist_tests=(install layout suite_deps examples notebook docs_examples typing plugin cli
             codec)
unpacked=$(echo "$tmp"/pysockkit-*)
files=()
for t in "${sdist_tests[@]}"; do files+=("$unpacked/tests/test_$t.py"); done
(cd "$tmp" && "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider \
    --rootdir "$tmp" -c /dev/null -W error "${files[@]}")
echo "=== [$(($(date +%s) - t_start)) s] done"
