"""Every ```python block of README.md and docs/*.md runs as written.

A block is either a script or, in docs/testing.md only, a test module (it
defines ``test_`` functions; tests/test_docs_testing.py runs those under
pytest with the pysockkit plugin).  Each script runs here in a fresh
interpreter, warnings as errors, and must exit 0 and write nothing to
stderr.  Where the page shows what a script prints, the output must match:

* a block of output right after the script, introduced by a paragraph that
  starts with "Output" (the README's quick start): stdout is exactly that;
* a ``print(...)`` whose comment starts with a Python literal
  (``print(x)  # b'hello'``, ``# [b'two', b'three']``, ``# True``): that
  value's ``str()`` is a line of stdout, in the order of the prints.
  Comments that are prose (``# e.g. 6.1e-05``, ``# two ports``) are not
  checked.

``mypy --strict`` checks every block, scripts and test modules alike.
Listings that are not programs use another fence tag (```text).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docblocks import README, ROOT, Block, blocks
from helpers import child_env, scaled

DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = [b for doc in DOCS for b in blocks(doc) if b.tag == "python"]
_TEST_DEF = re.compile(r"^def test_", re.M)
SCRIPTS = [b for b in PYTHON if not _TEST_DEF.search(b.text)]
TEST_MODULES = [b for b in PYTHON if _TEST_DEF.search(b.text)]

# print(...)  # <comment>: the comment up to a separator may be a literal
_PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+#\s*(.+)$")
_SEPARATORS = re.compile(r" \(|:|,|;|  ")


def _file_name(block: Block) -> str:
    stem = re.sub(r"\W", "_", block.path.stem.lower())
    return f"doc_{stem}_line{block.line:04d}.py"


def shown_output(block: Block) -> str | None:
    """The output block that the page shows right after this script, if any."""
    text = block.path.read_text()
    after = [b for b in blocks(block.path) if b.start >= block.end]
    if not after or after[0].tag not in ("", "text"):
        return None
    prose = text[block.end:after[0].start].strip()
    return after[0].text if prose.startswith("Output") else None


def commented_output(code: str) -> list[str]:
    """str() of the literal each ``print(...)  # literal ...`` comment starts with."""
    out = []
    for line in code.splitlines():
        m = _PRINT_COMMENT.match(line)
        if not m:
            continue
        comment = m.group(1).strip()
        cuts = [c.start() for c in _SEPARATORS.finditer(comment)] + [len(comment)]
        for cut in sorted(cuts, reverse=True):  # the longest prefix that is a literal
            try:
                value = ast.literal_eval(comment[:cut])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if value is not Ellipsis:
                out.append(str(value))
            break
    return out


def test_links_stay_in_the_repository() -> None:
    """Every relative link of the docs names a file of the repository (a
    clone or an sdist has nothing outside it); web links are left alone.
    The sdist leaves bench/ out: links into a top-level folder that is not
    here are only checked to stay inside."""
    bad = []
    for doc in [*DOCS, ROOT / "bench" / "README.md"]:
        if not doc.exists():
            continue
        for m in re.finditer(r"\]\(([^)\s]+)\)", doc.read_text()):
            target = m.group(1).split("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            path = (doc.parent / target).resolve()
            if not path.is_relative_to(ROOT):
                bad.append(f"{doc.relative_to(ROOT)}: {m.group(1)} (outside the repository)")
            elif not path.exists() and (ROOT / path.relative_to(ROOT).parts[0]).exists():
                bad.append(f"{doc.relative_to(ROOT)}: {m.group(1)} (no such file)")
    assert not bad, "links that leave the repository or name no file:\n" + "\n".join(bad)


def test_docs_have_python_examples() -> None:
    assert len(SCRIPTS) >= 15
    assert any(b.path == README for b in SCRIPTS)
    # test modules need pytest and the plugin: only docs/testing.md has them,
    # and tests/test_docs_testing.py runs them
    assert {b.path.name for b in TEST_MODULES} == {"testing.md"}


def test_output_checks_see_the_pages() -> None:
    """The two ways a page shows output are found where they are used."""
    quick_start = [b for b in SCRIPTS if b.path == README and shown_output(b) is not None]
    assert len(quick_start) == 1
    assert shown_output(quick_start[0]) is not None
    assert "recv    -> b'HELLO'\n" in (shown_output(quick_start[0]) or "")
    assert commented_output("print(x)      # b'one'\nprint(y)  # []: the stream ended\n"
                            "print(z)  # e.g. 6.1e-05 (seconds)\nprint(w)  # b'FAST', not b'X'\n"
                            "print(v)  # [b'two', b'three']\n") == [
        "b'one'", "[]", "b'FAST'", "[b'two', b'three']"]
    assert sum(len(commented_output(b.text)) for b in SCRIPTS) >= 15


@pytest.mark.parametrize("block", SCRIPTS, ids=[b.where for b in SCRIPTS])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / _file_name(block)
    script.write_text(block.text)
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=scaled(60), env=child_env())
    assert proc.returncode == 0, f"{block.where}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == "", f"{block.where}\n{proc.stderr}"
    shown = shown_output(block)
    if shown is not None:
        assert proc.stdout == shown, f"{block.where}: the page shows other output"
    lines = proc.stdout.splitlines()
    at = 0
    for want in commented_output(block.text):
        assert want in lines[at:], (
            f"{block.where}: a comment says a print shows {want!r}; "
            f"the output after line {at} is:\n" + "\n".join(lines[at:]))
        at = lines.index(want, at) + 1


def test_examples_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for block in PYTHON:
        path = tmp_path / _file_name(block)
        path.write_text(block.text)
        files.append(str(path))
    env = child_env()
    if "PYTHONPATH" in env:  # pysockkit from a source folder: show mypy where
        env["MYPYPATH"] = env["PYTHONPATH"]
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
         str(tmp_path / ".mypy_cache"), *files],
        cwd=tmp_path, capture_output=True, text=True, timeout=scaled(300), env=env)
    where = {_file_name(b): b for b in PYTHON}

    def locate(line: str) -> str:  # doc_x_line0042.py:7: error -> docs/x.md:48: error
        name, _, rest = line.partition(":")
        block = where.get(Path(name).name)
        if block is None or not rest.split(":")[0].isdigit():
            return line
        n, _, msg = rest.partition(":")
        return f"{block.path.relative_to(ROOT)}:{block.line + int(n) - 1}:{msg}"

    report = "\n".join(locate(ln) for ln in proc.stdout.splitlines())
    assert proc.returncode == 0, f"mypy --strict on the docs' examples:\n{report}\n{proc.stderr}"
