"""The test suite's own dependencies are installed, so nothing skips for a
missing package (issue 17: uvloop, matplotlib, hypothesis, the notebook
stack and Twisted must run in CI).

They are declared once, in pyproject.toml's ``[project.optional-dependencies]
test`` extra, which tests/run_all.sh installs (``pip install -e ".[test]"``
and ``"pysockkit[test] @ file://...sdist"``).  Install them with
``pip install -e ".[test]"``.
"""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement


def test_every_test_dependency_is_installed() -> None:
    try:
        reqs = [Requirement(r) for r in importlib.metadata.requires("pysockkit") or []]
    except importlib.metadata.PackageNotFoundError:
        raise AssertionError("pysockkit is not installed: pip install -e '.[test]'") from None
    test = [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": "test"})]
    names = {r.name.lower() for r in test}
    assert {"hypothesis", "nbformat", "nbclient", "ipykernel", "matplotlib", "uvloop",
            "twisted"} <= names, names
    missing = []
    for r in test:
        try:
            version = importlib.metadata.version(r.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(r))
            continue
        assert r.specifier.contains(version, prereleases=True), (r, version)
    assert not missing, (f"test dependencies not installed: {missing}; "
                         "run pip install -e '.[test]' (tests/run_all.sh does)")
