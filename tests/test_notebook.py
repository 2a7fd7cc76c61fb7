"""examples/states.ipynb runs top to bottom in a real Jupyter kernel and shows
the states it promises.

Needs nbclient, nbformat and ipykernel (tests/run_all.sh installs them); the
test is skipped without them, or when the notebook is not there (an sdist).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from helpers import child_env, scaled

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "states.ipynb"


def _texts(nb: Any) -> tuple[str, list[str]]:
    """All the output text of the notebook, and the error outputs."""
    parts: list[str] = []
    errors: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                parts.append(out["text"])
            elif kind in ("execute_result", "display_data"):
                for mime in ("text/plain", "text/html", "image/svg+xml"):
                    if mime in out["data"]:
                        parts.append(out["data"][mime])
            elif kind == "error":
                errors.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts), errors


def test_states_notebook_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Jupyter's import-time deprecations
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        pytest.importorskip("ipykernel")
    if not NOTEBOOK.exists():
        pytest.skip("examples/states.ipynb is not in this tree")
    # the kernel is a child process: let it import this same pysockkit
    env = child_env()
    if "PYTHONPATH" in env:
        monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    for cell in nb.cells:           # run from scratch, not the stored outputs
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(
        nb, timeout=scaled(60), kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    t0 = time.monotonic()
    with warnings.catch_warnings():
        # jupyter_client/zmq deprecations are not ours to fix
        warnings.simplefilter("ignore")
        client.execute()
    elapsed = time.monotonic() - t0
    text, errors = _texts(nb)
    assert not errors, errors
    for name in ("CLOSED", "ESTABLISHED", "FIN_WAIT_2", "TIME_WAIT", "CLOSE_WAIT",
                 "LAST_ACK", "FIN_WAIT_1", "CLOSING"):
        assert name in text, f"{name} missing from the notebook's outputs"
    # the timelines: "   42.035 ms  TIME_WAIT"
    assert " ms  TIME_WAIT" in text and " ms  CLOSE_WAIT" in text, text
    assert "<svg" in text                     # the state diagram rendered
    assert "observed CLOSE_WAIT" in text or "CLOSE_WAIT seen by" in text
    assert elapsed < scaled(30), f"the notebook took {elapsed:.1f} s"
