"""Run the examples of docs/testing.md, so the documentation stays true.

Every ```python block there is either a test module (it defines a
``test_`` function: all of them run together under pytester, with the
pysockkit plugin) or a script (run in this process).  Other blocks
(```text, ```console) are shown, not run.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import pysockkit

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)

# Names the examples use from the top-level package.
PUBLIC_NAMES = (
    "FaultProxy",
    "Latency",
    "Bandwidth",
    "Stall",
    "ResetPeer",
    "SlowClose",
    "Slicer",
    "LimitData",
)


def _blocks() -> list[tuple[int, str]]:
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


TESTS = [(line, code) for line, code in _blocks() if re.search(r"^def test_", code, re.M)]
SCRIPTS = [(line, code) for line, code in _blocks() if not re.search(r"^def test_", code, re.M)]

# Until pysockkit/__init__.py exports them, the examples see the names
# through this shim; test_public_names_are_exported says whether it is still
# needed.
_SHIM = """
import pysockkit, pysockkit.testing.proxy
for _n in {names!r}:
    if not hasattr(pysockkit, _n):
        setattr(pysockkit, _n, getattr(pysockkit.testing.proxy, _n))
"""

INI = """
[pytest]
filterwarnings =
    error
    ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning
"""


def _body_lines(code: str) -> int:
    """Lines of an example, not counting imports and blank lines."""
    return sum(
        1 for ln in code.splitlines()
        if ln.strip() and not re.match(r"(import|from) \w", ln)
    )


def test_doc_has_examples() -> None:
    assert len(TESTS) >= 12 and SCRIPTS
    lines = DOC.read_text().splitlines()
    faults = 0
    for line, code in TESTS:
        i = line - 3  # the line above the opening fence (0-based)
        while i > 0 and not lines[i].strip():
            i -= 1
        if lines[i].startswith("### "):  # a fault's worked example
            faults += 1
            assert _body_lines(code) < 10, f"docs/testing.md:{line}: keep it under ten lines"
    assert faults >= 7


def test_public_names_are_exported() -> None:
    missing = [n for n in PUBLIC_NAMES if not hasattr(pysockkit, n)]
    assert not missing, f"add {missing} to pysockkit/__init__.py (docs/testing.md uses them)"


def test_doc_test_examples_pass(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini(INI)
    pytester.makeconftest(_SHIM.format(names=PUBLIC_NAMES))
    files = {f"test_doc_line{line:04d}": code for line, code in TESTS}
    pytester.makepyfile(**files)
    n = sum(len(re.findall(r"^def test_", code, re.M)) for _, code in TESTS)
    r = pytester.runpytest("-p", "pysockkit._pytest_plugin", "-p", "no:cacheprovider", "-v")
    r.assert_outcomes(passed=n)


@pytest.mark.parametrize("line,code", SCRIPTS, ids=[f"line{line}" for line, _ in SCRIPTS])
def test_doc_scripts_run(line: int, code: str) -> None:
    exec(_SHIM.format(names=PUBLIC_NAMES), {})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"docs/testing.md:{line}", "exec"), {"__name__": "__main__"})
    assert out.getvalue()
