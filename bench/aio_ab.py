"""aio_ab.py - one aio_bench row, two checkouts, alternating trials.

    python bench/aio_ab.py BEFORE_TREE [AFTER_TREE] [--rounds 12] [--count 150000]
                           [--row r-aio]

Loads bench/aio_bench.py from each tree (AFTER_TREE defaults to this one)
and runs that tree's own ``trial()`` for the row (default ``r-aio``,
rr-64x100: pipelined request/reply, 100 in flight, server on CPU 1,
client on CPU 0), the two trees alternating and swapping order every
round, so that drift of a noisy machine falls on both alike.  Prints every
trial, the median (min, max) of each tree, its CPU µs per message (both
processes), and the ratio of the medians, AFTER / BEFORE.  Each tree must
have its extension built (``python setup.py build_ext --inplace`` there).

Example (the before/after figures of bench/RESULTS-restructure.md)::

    git worktree add /tmp/before 403bb19
    (cd /tmp/before && python setup.py build_ext --inplace)
    python bench/aio_ab.py /tmp/before --rounds 12 --count 150000
    ...
    after / before: 0.979
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType


def load(tree: Path, tag: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"aio_bench_{tag}", tree / "bench" / "aio_bench.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"aio_ab: no bench/aio_bench.py under {tree}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path, nargs="?", default=here)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--count", type=int, default=150_000)
    ap.add_argument("--row", default="r-aio")
    a = ap.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    mods = {tag: load(tree, tag) for tag, tree in trees.items()}
    rows = {}
    for tag, mod in mods.items():
        found = [r for r in mod.rows(have_uvloop=True) if r.key == a.row]
        if not found:
            raise SystemExit(f"aio_ab: {trees[tag]}/bench/aio_bench.py has no row {a.row!r}")
        rows[tag] = found[0]
    res: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for r in range(a.rounds):
        for tag in (("before", "after") if r % 2 == 0 else ("after", "before")):
            rate, cpu = mods[tag].trial(rows[tag], a.count, 120.0)
            res[tag].append((rate, cpu))
            print(f"round {r + 1:2d} {tag:6s} {rate / 1e3:7.1f} k msg/s  CPU {cpu:.2f} µs/msg", flush=True)
    med = {}
    for tag in ("before", "after"):
        rates = [x[0] for x in res[tag]]
        med[tag] = statistics.median(rates)
        print(f"{tag} ({trees[tag]}): median {med[tag] / 1e3:.1f} k (min {min(rates) / 1e3:.1f}, "
              f"max {max(rates) / 1e3:.1f}), CPU median "
              f"{statistics.median(x[1] for x in res[tag]):.2f} µs/msg")
    print(f"after / before: {med['after'] / med['before']:.3f}")


if __name__ == "__main__":
    main()
