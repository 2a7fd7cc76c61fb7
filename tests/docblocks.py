"""The fenced code blocks of the project's markdown files, and a runner for
the shell commands they tell a user to type.

As a module it gives ``blocks(path)`` (tests/test_docs_examples.py runs the
```python blocks of README.md and docs/*.md).  As a script it is the first
step of tests/run_all.sh::

    python3 tests/docblocks.py [readme] [bench]

``readme``: the README's first command (its first fenced block that mentions
``pysockkit tour``), read from README.md, never copied, runs in a fresh
``git clone`` of this checkout, from the clone's root, with a fresh
virtualenv first on PATH, as a newcomer would type it; the tour must exit 0
and print every line of the README's excerpt of its output (the first other
block whose first line starts with "pysockkit tour").  ``bench``: every line
of the ```sh blocks of bench/README.md, the same way, with
PYSOCKKIT_BENCH_SMOKE=1 (bench/run.py then cuts its counts and fails if any
row failed).  With no argument, both.

A command is one line of a block, stripped; comment lines are dropped, a
leading "$ " is removed, and lines starting with "git clone" or "cd " are
dropped, because the runner already stands in the clone's root.  The lines
of one block run as one ``bash -c "set -e ..."`` script.  These are the
rules of the project's before-stop hook, which runs the README's command
the same way.  Only what is committed is tested: the runner clones HEAD.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCH_README = ROOT / "bench" / "README.md"

# an opening fence at the start of a line, its tag, the body, the closing fence
_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
# a number in the README's excerpt of the tour's output stands for any number
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class Block:
    """One fenced block: its file, the line of its first code line (1-based),
    the fence's tag ("" for a bare fence), its text, and where the block
    (fences included) starts and ends in the file (character offsets)."""

    path: Path
    line: int
    tag: str
    text: str
    start: int
    end: int

    @property
    def where(self) -> str:
        """``file:line``, relative to the repository."""
        try:
            name = self.path.relative_to(ROOT)
        except ValueError:
            name = self.path
        return f"{name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, in order."""
    text = path.read_text()
    return [Block(path, text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2),
                  m.start(), m.end()) for m in _FENCE.finditer(text)]


def commands(block: Block) -> list[str]:
    """The lines of a block a user types, by the rules of the module doc."""
    out = []
    for raw in block.text.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:].lstrip()
        if not line or line.startswith("#") or line.startswith(("git clone", "cd ")):
            continue
        out.append(line)
    return out


def readme_tour() -> tuple[Block, list[str]]:
    """The README's first command block, and the lines of its output excerpt
    ("..." lines left out)."""
    all_blocks = blocks(README)
    cmd = next((b for b in all_blocks if "pysockkit tour" in b.text), None)
    if cmd is None:
        raise SystemExit(f"{README}: no fenced block mentions `pysockkit tour`")
    excerpt = next((b for b in all_blocks
                    if b is not cmd and b.text.startswith("pysockkit tour")), None)
    if excerpt is None:
        raise SystemExit(f"{README}: no block shows the tour's output (first line "
                         "'pysockkit tour...')")
    return cmd, [ln.rstrip() for ln in excerpt.text.splitlines()
                 if ln.strip() and ln.strip() != "..."]


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines that the output lacks, matched in order, each as a
    whole line, a number matching any number."""
    lines = [ln.rstrip() for ln in output.splitlines()]
    i, missing = 0, []
    for want in expected:
        pattern = re.compile("".join(re.escape(part) if k % 2 == 0 else _NUMBER.pattern
                                     for k, part in enumerate(_split(want))))
        j = next((j for j in range(i, len(lines)) if pattern.fullmatch(lines[j])), None)
        if j is None:
            missing.append(want)
        else:
            i = j + 1
    return missing


def _split(line: str) -> list[str]:
    """Text and numbers alternating: [text, number, text, ..., text]."""
    parts, pos = [], 0
    for m in _NUMBER.finditer(line):
        parts += [line[pos:m.start()], m.group()]
        pos = m.end()
    return parts + [line[pos:]]


def run_fresh(script: list[str], *, timeout: float, env: dict[str, str]) -> tuple[int, str]:
    """Run the lines as ``bash -c "set -e ..."`` in the root of a fresh clone
    of this checkout with a fresh virtualenv first on PATH.  Returns the exit
    status (124 after ``timeout`` seconds, the whole process group killed)
    and the combined output."""
    with tempfile.TemporaryDirectory(prefix="pysockkit-docblocks-") as tmp:
        clone, venv = Path(tmp) / "clone", Path(tmp) / "venv"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        env = {**os.environ, **env, "VIRTUAL_ENV": str(venv),
               "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.Popen(["bash", "-c", "set -e\n" + "\n".join(script)], cwd=clone,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return 124, out + f"\n(killed after {timeout:.0f} s)\n"


def _check(name: str, script: list[str], timeout: float, env: dict[str, str],
           expected: list[str]) -> bool:
    print(f"--- {name}:", *script, sep="\n    $ ", flush=True)
    t0 = time.monotonic()
    status, out = run_fresh(script, timeout=timeout, env=env)
    took = time.monotonic() - t0
    missing = missing_lines(expected, out) if status == 0 else []
    if status == 0 and not missing:
        print(f"    ok in {took:.0f} s (clone, venv and commands)", flush=True)
        return True
    print("\n".join(out.splitlines()[-40:]))
    if status:
        print(f"FAILED: {name} exited with status {status} after {took:.0f} s", flush=True)
    else:
        print(f"FAILED: {name}: the output lacks these lines of the README's excerpt "
              f"(in order):", *missing, sep="\n    ", flush=True)
    return False


def main(argv: list[str]) -> int:
    what = argv or ["readme", "bench"]
    unknown = set(what) - {"readme", "bench"}
    if unknown:
        print(f"usage: {sys.argv[0]} [readme] [bench]; unknown: {sorted(unknown)}",
              file=sys.stderr)
        return 2
    ok = True
    if "readme" in what:
        cmd, expected = readme_tour()
        ok &= _check(f"{cmd.where} (the README's first command)", commands(cmd),
                     timeout=180, env={}, expected=expected)
    if "bench" in what:
        script = [c for b in blocks(BENCH_README) if b.tag == "sh" for c in commands(b)]
        if not script:
            print(f"FAILED: {BENCH_README} has no ```sh block", flush=True)
            return 1
        ok &= _check("bench/README.md's commands (smoke mode)", script, timeout=420,
                     env={"PYSOCKKIT_BENCH_SMOKE": "1"}, expected=[])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
