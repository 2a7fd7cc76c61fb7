"""Static types: what ``recv`` returns, checked by ``mypy --strict``.

One mypy run covers tests/typing/*.py and every ```python example of
docs/modes.md (written to a temporary directory).  In tests/typing a line
ending in ``# R: <type>`` must reveal that type (``reveal_type``), a line
ending in ``# E: <code>`` must be an error with that code, and no other line
may be an error; the docs' examples must have no error at all (among them
the aio echo example, the correlated ones, and the section "Types: what
`recv` returns", whose examples also run here).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, child_env, scaled

TYPING = REPO_ROOT / "tests" / "typing"
DOC = REPO_ROOT / "docs" / "modes.md"
TYPES_HEADING = "## Types: what `recv` returns"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
_OUT = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*?)"
                  r"(?:  \[(?P<code>[a-z-]+)\])?$")
_MARK = re.compile(r"\S  # (?P<kind>[ER]): (?P<what>.+?)\s*$")  # after code


def _doc_blocks(text: str, start: int = 0, end: int = -1) -> list[tuple[int, str]]:
    """(line number, code) of the python blocks of text[start:end]."""
    end = len(text) if end < 0 else end
    return [(text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in _BLOCK.finditer(text, start, end)]


def _types_section(text: str) -> tuple[int, int]:
    start = text.index("\n" + TYPES_HEADING + "\n") + 1
    nxt = re.compile(r"^## ", re.M).search(text, start + len(TYPES_HEADING))
    return start, nxt.start() if nxt else len(text)


def _norm(t: str) -> str:
    """A type as mypy prints it, without the builtins. prefix older mypy
    versions add."""
    return t.replace("builtins.", "").strip()


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, list[re.Match[str]]]:
    """Run mypy --strict once over every file; its messages per file.  (The
    docs' examples are type-checked by tests/test_docs_examples.py.)"""
    files = sorted(TYPING.glob("*.py"))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-absolute-path",
         "--cache-dir", str(tmp_path_factory.mktemp("mypy_cache")), *map(str, files)],
        capture_output=True, text=True, timeout=scaled(300), cwd=REPO_ROOT, env=child_env())
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    out: dict[Path, list[re.Match[str]]] = {f.resolve(): [] for f in files}
    for raw in proc.stdout.splitlines():
        m = _OUT.match(raw)
        assert m is not None, f"unexpected mypy output: {raw}"
        out[Path(m["path"]).resolve()].append(m)
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in TYPING.glob("*.py")))
def test_typing_file(name: str, mypy_output: dict[Path, list[re.Match[str]]]) -> None:
    path = (TYPING / name).resolve()
    want_err: dict[int, str] = {}
    want_reveal: dict[int, str] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        mark = _MARK.search(line)
        if mark is None:
            continue
        (want_err if mark["kind"] == "E" else want_reveal)[i] = _norm(mark["what"])
    got_err = {int(m["line"]): m["code"] for m in mypy_output[path] if m["kind"] == "error"}
    got_reveal = {int(m["line"]): _norm(m["msg"].split('"', 1)[1].rsplit('"', 1)[0])
                  for m in mypy_output[path]
                  if m["kind"] == "note" and m["msg"].startswith("Revealed type is")}
    messages = "\n".join(m.string for m in mypy_output[path])
    assert got_err == want_err, messages
    assert got_reveal == want_reveal, messages
    assert want_err or want_reveal  # each file checks something


def test_the_files_cover_plain_correlated_and_mistakes() -> None:
    names = {p.name for p in TYPING.glob("*.py")}
    assert {"sync_types.py", "aio_types.py", "must_fail.py"} <= names
    text = (TYPING / "must_fail.py").read_text()
    assert text.count("# E:") >= 4


def test_types_section_examples_run() -> None:
    text = DOC.read_text()
    blocks = _doc_blocks(text, *_types_section(text))
    assert blocks
    for line, code in blocks:
        proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                              text=True, timeout=scaled(60), env=child_env())
        assert proc.returncode == 0, f"docs/modes.md:{line}\n{proc.stderr}"
