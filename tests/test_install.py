"""Importing a pysockkit folder whose C extension is not built.

The commonest first-contact failure: Python started in the root of a clone
imports the source folder ``pysockkit/`` (the current directory comes first
on sys.path), where ``_core`` was never built.  The import must say what
happened and what to do, not "cannot import name '_core' from partially
initialized module".

Each test copies the package's Python files (no shared object) to a temp
dir and imports it in a child started with ``-S``: no site-packages, so no
installed or editable pysockkit can stand in for the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pysockkit

from docblocks import commands, missing_lines, readme_tour
from helpers import scaled

PACKAGE = Path(pysockkit.__file__).resolve().parent


def _copy_sources(dest: Path) -> Path:
    """The package's files, without any built extension, under dest."""
    pkg = dest / "pysockkit"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return pkg


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=scaled(30))


def test_clone_root_without_build_says_what_to_do(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    (tmp_path / "setup.py").write_text("# the clone's setup.py\n")
    for args in (("-c", "import pysockkit"), ("-m", "pysockkit", "tour")):
        proc = _run(tmp_path, *args)
        assert proc.returncode == 1, proc
        last = proc.stderr.strip().splitlines()[-1]
        # python -m wraps it: "Error while finding module specification ... (ImportError: ...)"
        assert "ImportError: pysockkit's C extension (pysockkit._core" in last, last
        assert f"is not built in {tmp_path / 'pysockkit'}" in last
        assert "root of a clone" in last
        assert "`pip install -e .`" in last and "build_ext --inplace" in last
        assert "run Python from another directory" in last
        assert "partially initialized" not in proc.stderr


def test_extension_for_another_python_is_named(tmp_path: Path) -> None:
    pkg = _copy_sources(tmp_path)
    (pkg / "_core.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")
    proc = _run(tmp_path, "-c", "import pysockkit")
    assert proc.returncode == 1, proc
    last = proc.stderr.strip().splitlines()[-1]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"(pysockkit._core{suffix}) is not built" in last, last
    assert "(only _core.cpython-399-x86_64-linux-gnu.so, built for another Python)" in last
    # no setup.py next to the folder: not a clone, an incomplete installation
    assert "The installation is incomplete: reinstall pysockkit with this Python." in last


def test_import_error_is_an_import_error(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    code = ("try:\n    import pysockkit\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e.name)\n")
    proc = _run(tmp_path, "-c", code)
    assert proc.returncode == 0, proc
    assert proc.stdout == "ImportError pysockkit\n"


def test_readme_first_command_and_its_output_are_found() -> None:
    """What tests/run_all.sh runs (tests/docblocks.py readme): the README's
    first command, with its venv step, and the excerpt of the tour's output
    that it checks (numbers stand for any number, '...' lines for anything)."""
    block, expected = readme_tour()
    script = commands(block)
    assert script[0].startswith("python3 -m venv ") and "activate" in script[0]
    assert script[-1].endswith("python -m pysockkit tour")
    assert expected[0].startswith("pysockkit tour")
    assert sum(line.startswith("== ") for line in expected) >= 9
    assert expected[-1] == "tour finished in 3.25 s"
    out = "\n".join([expected[0], "anything", *expected[1:-1], "tour finished in 31 s", ""])
    assert missing_lines(expected, out) == []
    assert missing_lines(expected, out.replace("Short connections", "Shirt connections")) == [expected[3]]
    assert missing_lines(["b", "a"], "a\nb\n") == ["a"]  # in order
