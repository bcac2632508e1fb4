"""Every notebook in notebooks/ runs top to bottom, offline, on an embedded server, and is
committed with the outputs of a run (a reader on GitHub sees what each cell printed)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VALKEY_URL", raising=False)
    monkeypatch.delenv("VALKEY_CLUSTER_URL", raising=False)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run from a clean slate, not the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(nb, timeout=180, kernel_name="python3", resources=resources).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors
    # the run shows something for every cell, as the committed copy does
    assert all(c.outputs for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_with_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    empty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.outputs]
    assert not empty, f"code cells without outputs (execute and save the notebook): {empty}"
    assert all(c.execution_count for c in code), "some cells were never executed"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), "cells were executed out of order"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "a committed cell shows an error"


def test_observability_notebook_has_a_plot() -> None:
    (path,) = [p for p in NOTEBOOKS if "observability" in p.name]
    nb = nbformat.read(path, as_version=4)
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images


def test_there_are_notebooks() -> None:
    names = {p.stem.split("_", 1)[1] for p in NOTEBOOKS}
    assert {"checkpointer", "llm_and_tool_caches", "store", "observability", "cluster"} <= names
