"""The package's layout (docs/ARCHITECTURE.md): a plain ``import pysockkit``
loads no asyncio and none of the subpackages, every public name still
resolves (loaded on first use)."""

from __future__ import annotations

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


def test_every_public_name_resolves_on_first_use() -> None:
    got = _child(
        "import json, pysockkit as sk\n"
        "missing = [n for n in sk.__all__ if getattr(sk, n, None) is None]\n"
        "from pysockkit import aio, lab, simplex\n"
        "import pysockkit.aio, pysockkit.testing\n"
        "same = [sk.aio is aio is pysockkit.aio, sk.lab is lab, sk.simplex is simplex,\n"
        "        sk.testing is pysockkit.testing]\n"
        "print(json.dumps({'missing': missing, 'same': same,\n"
        "                  'dir': sorted(set(sk.__all__) - set(dir(sk)))}))")
    assert got == {"missing": [], "same": [True] * 4, "dir": []}
