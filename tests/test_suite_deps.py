"""The test suite's own dependencies are installed, so nothing skips for a
missing package (issue 17: uvloop, matplotlib, hypothesis, the notebook
stack and Twisted must run in CI).

They are declared once, in pyproject.toml's ``[project.optional-dependencies]
test`` extra, which tests/run_all.sh installs (``pip install -e ".[test]"``
and ``"pysockkit[test] @ file://...sdist"``).  Install them with
``pip install -e ".[test]"``.  pyproject.toml is read from the tree (the
source, the sanitizer pass's copy or the unpacked sdist), not from the
installed metadata, which can be older than the file.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def declared() -> list[Requirement]:
    text = PYPROJECT.read_text()
    block = re.search(r"^test = \[(.*?)^\]", text, re.M | re.S)
    assert block, f"no test extra in {PYPROJECT}"
    return [Requirement(r) for r in re.findall(r'"([^"]+)"', block.group(1))]


def test_every_test_dependency_is_installed() -> None:
    reqs = declared()
    names = {r.name.lower() for r in reqs}
    assert {"pytest", "hypothesis", "nbformat", "nbclient", "ipykernel", "matplotlib",
            "uvloop", "twisted"} <= names, names
    missing = []
    for r in reqs:
        try:
            version = importlib.metadata.version(r.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(r))
            continue
        assert r.specifier.contains(version, prereleases=True), (str(r), version)
    assert not missing, (f"test dependencies not installed: {missing}; "
                         "run pip install -e '.[test]' (tests/run_all.sh does)")
