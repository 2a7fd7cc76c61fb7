"""The package's layout (docs/ARCHITECTURE.md): a plain ``import pysockkit``
loads no asyncio and none of the subpackages, every public name still
resolves (loaded on first use), and no module imports another that imports
it back (directly or through others, at any depth; function-level imports
count too, imports for type checkers only under ``if TYPE_CHECKING:`` do
not: they never run)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from helpers import STEP_TIMEOUT, child_env

import pysockkit

PACKAGE = Path(pysockkit.__file__).resolve().parent


def _child(code: str) -> object:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT * 3, env=child_env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_plain_import_loads_no_asyncio_and_no_subpackage() -> None:
    loaded = _child("import sys, json, pysockkit\n"
                    "print(json.dumps(sorted(m for m in sys.modules if m == 'asyncio'\n"
                    "    or m.startswith(('asyncio.', 'pysockkit.')))))")
    assert isinstance(loaded, list)
    assert "asyncio" not in loaded, loaded
    for sub in ("aio", "lab", "simplex", "testing"):
        assert not any(m == f"pysockkit.{sub}" or m.startswith(f"pysockkit.{sub}.")
                       for m in loaded), loaded


def test_plain_import_loads_no_heavy_stdlib_module() -> None:
    # issue 12 item 4 (import time): the eager path (pysockkit, _errors,
    # _core, _version, _types, _net, _conn, _enums) imports none of these;
    # typing only for type checkers (pysockkit/_notyping.py).  -S: no site,
    # so no editable-install finder (it loads pathlib and importlib.util,
    # which a normal install never does); PYTHONPATH points at the imported
    # pysockkit.
    heavy = ["dataclasses", "inspect", "re", "asyncio", "pathlib", "typing"]
    env = child_env()
    env["PYTHONPATH"] = str(PACKAGE.parent) + (
        ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "import pysockkit\n"
            "after = set(sys.modules)\n"
            "import json\n"  # json loads re: after the count
            "print(json.dumps([sorted(before), sorted(after - before)]))")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       timeout=STEP_TIMEOUT * 3, env=env)
    assert r.returncode == 0, r.stderr
    before, loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert "pysockkit._types" in loaded, loaded  # the import ran
    found = {when: [m for m in names if m.split(".")[0] in heavy]
             for when, names in (("at start", before), ("by import pysockkit", loaded))}
    assert found == {"at start": [], "by import pysockkit": []}


def test_every_public_name_resolves_on_first_use() -> None:
    got = _child(
        "import json, pysockkit as sk\n"
        "missing = [n for n in sk.__all__ if getattr(sk, n, None) is None]\n"
        "from pysockkit import aio, lab, simplex\n"
        "import pysockkit.aio, pysockkit.testing\n"
        "same = [sk.aio is aio is pysockkit.aio, sk.lab is lab, sk.simplex is simplex,\n"
        "        sk.testing is pysockkit.testing, sk.FaultProxy is sk.testing.FaultProxy]\n"
        "print(json.dumps({'missing': missing, 'same': same,\n"
        "                  'dir': sorted(set(sk.__all__) - set(dir(sk)))}))")
    assert got == {"missing": [], "same": [True] * 5, "dir": []}


def _imports(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The pysockkit modules that *module* (at *path*) imports, anywhere."""
    base = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # drop the type checkers' imports first
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "pysockkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pysockkit":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != module}


def test_no_import_cycles() -> None:
    files: dict[str, tuple[Path, bool]] = {}
    for path in PACKAGE.rglob("*.py*"):
        if path.suffix not in (".py", ".pyi"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        if path.suffix == ".py" or name not in files:
            files[name] = (path, is_package)
    known = set(files)
    graph = {name: (set() if path.suffix == ".pyi" else _imports(path, name, is_package, known))
             for name, (path, is_package) in files.items()}

    # depth-first search for a back edge; report the cycle it closes
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_c_files_have_no_call_cycles_and_keep_their_layers() -> None:
    """tests/c/layers.py: the call graph between csrc/ files (from nm) has
    no cycle, core/ calls only core/, testkit/ only core/ and testkit/, and
    no binding file calls up into binding/module.c."""
    script = Path(__file__).resolve().parent / "c" / "layers.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith("0 cycles, 0 layering breaks"), last
