"""Run the examples of docs/modes.md, sections "asyncio: pysockkit.aio"
and "Servers: one handler model", so the documentation stays true.

Every ```python block under those headings (down to the next level-2
heading) is a complete script: it runs in a child process with warnings
turned into errors and must exit 0 within its time limit.  Other sections
of the file belong to other modes and are run by their own tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import child_env

DOC = Path(__file__).resolve().parent.parent / "docs" / "modes.md"
HEADINGS = ("## asyncio: pysockkit.aio", "## Servers: one handler model")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _section(heading: str) -> tuple[int, str]:
    """(line number of the heading, text of the section)."""
    text = DOC.read_text()
    start = text.index("\n" + heading + "\n") + 1
    nxt = re.compile(r"^## ", re.M).search(text, start + len(heading))
    end = nxt.start() if nxt else len(text)
    return text.count("\n", 0, start) + 1, text[start:end]


def _blocks() -> list[tuple[int, str]]:
    out = []
    for heading in HEADINGS:
        first, section = _section(heading)
        out += [(first + section.count("\n", 0, m.start()) + 1, m.group(1))
                for m in _BLOCK.finditer(section)]
    return out


BLOCKS = _blocks()


def test_the_sections_have_examples() -> None:
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_example_runs(line: int, code: str) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=30, env=child_env())
    assert proc.returncode == 0, f"docs/modes.md:{line}\n{proc.stderr}"
    assert proc.stderr == "", f"docs/modes.md:{line}\n{proc.stderr}"
