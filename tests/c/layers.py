#!/usr/bin/env python3
"""layers.py - the call graph between the C files of csrc/, from nm.

Compiles every csrc/**/*.c to an object (in a temporary directory), reads
which global symbols each object defines and which it uses (nm), and draws
one edge A -> B for every symbol that A uses and B defines.  Prints the
edges, the cycles (strongly connected components of more than one file)
and every edge that breaks the layering:

  core/     uses only core/
  testkit/  uses only core/ and testkit/
  binding/  uses anything but binding/module.c (which only assembles)

Exit status 1 on a cycle or a layering break.  Needs cc, nm and the
Python headers.

    python3 tests/c/layers.py [-v]
"""
import os
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def compile_all(out: Path) -> dict[str, Path]:
    srcs = sorted(p.relative_to(CSRC).as_posix() for p in CSRC.rglob("*.c"))
    flags = ["-std=c11", "-D_GNU_SOURCE", "-O0", "-w", "-I" + str(CSRC),
             "-I" + sysconfig.get_paths()["include"]]
    objs = {}

    def one(rel: str) -> None:
        obj = out / (rel.replace("/", "_") + ".o")
        subprocess.run([os.environ.get("CC", "cc"), *flags, "-c", str(CSRC / rel),
                        "-o", str(obj)], check=True)
        objs[rel] = obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        list(ex.map(one, srcs))
    return objs


def symbols(obj: Path) -> tuple[set[str], set[str]]:
    """(defined, used) global symbols of obj."""
    lines = subprocess.run(["nm", "-P", str(obj)], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    defined, used = set(), set()
    for line in lines:
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            used.add(name)
        elif kind.isupper():  # global text, data, bss, common
            defined.add(name)
    return defined, used


def layer(rel: str) -> str:
    return rel.split("/")[0] if "/" in rel else ""


def allowed(a: str, b: str) -> bool:
    la, lb = layer(a), layer(b)
    if la == "core":
        return lb == "core"
    if la == "testkit":
        return lb in ("core", "testkit")
    if la == "binding":
        return b != "binding/module.c"
    return True


def cycles(files: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in files:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    verbose = "-v" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="sk-layers.") as tmp:
        objs = compile_all(Path(tmp))
        syms = {rel: symbols(obj) for rel, obj in objs.items()}
    owner: dict[str, str] = {}
    for rel, (defined, _) in syms.items():
        for s in defined:
            owner[s] = rel
    edges: dict[str, set[str]] = {}
    why: dict[tuple[str, str], set[str]] = {}
    for rel, (_, used) in syms.items():
        for s in used:
            b = owner.get(s)
            if b is not None and b != rel:
                edges.setdefault(rel, set()).add(b)
                why.setdefault((rel, b), set()).add(s)
    bad = 0
    for (a, b), ss in sorted(why.items()):
        ok = allowed(a, b)
        if verbose or not ok:
            print(f"{'' if ok else 'LAYER BREAK '}{a} -> {b}: {', '.join(sorted(ss))}")
        bad += not ok
    found = cycles(sorted(syms), edges)
    for comp in found:
        print("CYCLE: " + " <-> ".join(comp))
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"    {a} -> {b}: {', '.join(sorted(why[(a, b)]))}")
    print(f"{len(syms)} files, {sum(len(v) for v in edges.values())} edges, "
          f"{len(found)} cycles, {bad} layering breaks")
    return 1 if found or bad else 0


if __name__ == "__main__":
    sys.exit(main())
