"""Runs notebooks/quickstart.ipynb's code cells in order with plain exec() on CPU
(no jupyter needed), so the notebook cannot rot."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def code_cells(nb):
  return [c for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.fixture(scope="module")
def notebook():
  return json.loads(NOTEBOOK.read_text())


def test_committed_with_outputs(notebook):
  cells = code_cells(notebook)
  assert all(c["execution_count"] is not None for c in cells), "run the notebook before committing"
  outputs = [o for c in cells for o in c["outputs"]]
  assert not [o for o in outputs if o["output_type"] == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 3 and all(len(o["data"]["image/png"]) < 300_000 for o in images)


@pytest.mark.slow
def test_notebook_runs(notebook, tmp_path, monkeypatch):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  ns = {"__name__": "__main__"}
  try:
    for i, cell in enumerate(code_cells(notebook)):
      source = "".join(cell["source"])
      assert not any(line.lstrip().startswith(("%", "!")) for line in source.splitlines())
      exec(compile(source, f"{NOTEBOOK.name}[code cell {i}]", "exec"), ns)
  finally:
    plt.close("all")
  # the loop evaluated at every point of the schedule, and the runs learned
  assert len(ns["history"]) == len(ns["config"].eval_steps(ns["cfg"]))
  assert np.all(ns["acc"]["train"][-1] > 0.9)
  # the sweep's run directory, its checkpoint and its figures
  workdir = Path(ns["workdir"])
  assert workdir.parent == tmp_path and (workdir / "summary.json").exists()
  assert ns["val_acc"] == pytest.approx(ns["rd"].metrics["val_acc"][-1, 3], abs=1e-6)
  assert [p.name for p in ns["paths"]] == [
    "curves.png",
    "steps_to_threshold.png",
    "weight_norm.png",
  ]
  assert all(p.stat().st_size > 10_000 for p in ns["paths"])
