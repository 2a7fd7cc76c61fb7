"""Run the examples of docs/modes.md, section "asyncio: pysockkit.aio",
so the documentation stays true.

Every ```python block under that heading (down to the next level-2
heading) is a complete script: it runs in a child process with warnings
turned into errors, must exit 0 within its time limit, and must print what
the documentation shows: each ``print(...)`` makes one line, in order, and
a comment after it is the documented output (``# b'hello'``: exactly that
value; ``# e.g. 6.1e-05 (seconds)``: a value of that type; ``# requests
1000, replies 1000``: those items of a printed dict).  A print without a
comment prints its literal text, an f-string's text around the fields.
Other sections of the file belong to other modes and are run by their own
tests.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import child_env, scaled

DOC = Path(__file__).resolve().parent.parent / "docs" / "modes.md"
HEADING = "## asyncio: pysockkit.aio"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _section() -> tuple[int, str]:
    """(line number of the heading, text of the section)."""
    text = DOC.read_text()
    start = text.index("\n" + HEADING + "\n") + 1
    nxt = re.compile(r"^## ", re.M).search(text, start + len(HEADING))
    end = nxt.start() if nxt else len(text)
    return text.count("\n", 0, start) + 1, text[start:end]


def _blocks() -> list[tuple[int, str]]:
    first, section = _section()
    return [(first + section.count("\n", 0, m.start()) + 1, m.group(1))
            for m in _BLOCK.finditer(section)]


BLOCKS = _blocks()


_MISSING = object()


def _literal(text: str) -> Any:
    """The longest leading part of text that is a Python literal
    (``[]: the stream ended`` -> []), or _MISSING."""
    for end in range(len(text), 0, -1):
        try:
            return ast.literal_eval(text[:end].strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    return _MISSING


def _value_check(comment: str) -> tuple[str, Callable[[str], bool]]:
    """What a documented-output comment promises about a printed value."""
    approx = comment.startswith("e.g.")
    text = comment[len("e.g."):].strip() if approx else comment
    want = _literal(text)
    if want is not _MISSING and approx:
        return f"a {type(want).__name__} like {text}", lambda out: type(_literal(out)) is type(want)
    if want is not _MISSING:
        return repr(want), lambda out: out == repr(want) or _literal(out) == want
    # prose: "requests 1000, replies 1000, late/duplicate/unknown 0"
    items = {name: int(n) for names, n in re.findall(r"([\w/]+) (\d+)", text)
             for name in names.split("/")}
    assert items, f"cannot read the documented output {comment!r}"

    def dict_has(out: str) -> bool:
        got = _literal(out)
        return isinstance(got, dict) and all(got.get(k, _MISSING) == v for k, v in items.items())

    return f"a dict with {items}", dict_has


def _expected_lines(code: str) -> list[tuple[str, Callable[[str], bool]]]:
    """(description, check) of each line the block prints, in order."""
    comments = {tok.start[0]: tok.string[1:].strip()
                for tok in tokenize.generate_tokens(io.StringIO(code).readline)
                if tok.type == tokenize.COMMENT}
    calls = sorted((node for node in ast.walk(ast.parse(code))
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "print"), key=lambda n: n.lineno)
    out = []
    for call in calls:
        fixed: list[str] = []  # leading string literals, as regex
        rest = list(call.args)
        while rest and isinstance(rest[0], (ast.Constant, ast.JoinedStr)):
            arg = rest.pop(0)
            if isinstance(arg, ast.Constant):
                fixed.append(re.escape(str(arg.value)))
            else:
                fixed.append("".join(re.escape(str(v.value)) if isinstance(v, ast.Constant)
                                     else ".+?" for v in arg.values))
        comment = comments.get(call.end_lineno or call.lineno)
        if not rest:
            pattern = " ".join(fixed)
            out.append((pattern, lambda line, p=pattern: re.fullmatch(p, line) is not None))
            continue
        what, check = (_value_check(comment) if comment else ("any value", lambda v: v != ""))
        head = " ".join(fixed) + " " if fixed else ""

        def matches(line: str, head: str = head, check: Callable[[str], bool] = check) -> bool:
            m = re.fullmatch(head + "(.*)", line)
            return m is not None and check(m.group(1))

        out.append((head + what, matches))
    return out


def test_the_section_has_examples() -> None:
    assert len(BLOCKS) >= 5
    # and the documented outputs are read: every block prints something
    assert all(_expected_lines(code) for _, code in BLOCKS)


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_example_runs_and_prints_what_the_docs_show(line: int, code: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=scaled(30), env=child_env())
    assert proc.returncode == 0, f"docs/modes.md:{line}\n{proc.stderr}"
    assert proc.stderr == "", f"docs/modes.md:{line}\n{proc.stderr}"
    expected = _expected_lines(code)
    printed = proc.stdout.splitlines()
    assert len(printed) == len(expected), (
        f"docs/modes.md:{line}: {len(expected)} print() calls, output:\n{proc.stdout}")
    for got, (want, check) in zip(printed, expected):
        assert check(got), f"docs/modes.md:{line}: printed {got!r}, the docs show {want}"
