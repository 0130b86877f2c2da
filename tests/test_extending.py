"""docs/extending.md's python block, run exactly as written (in a fresh process, so
its registrations stay there), then checked: the new method and model swept beside
the baseline, and a run of the batched program equal to the same run trained alone."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"

CHECK = """
import json
from grokjax import logs

s = sweep.build(cfg)
i = next(k for k, r in enumerate(s.runs)
         if (r["model"], r["sign_beta"], r["seed"]) == ("embed_mlp", 0.5, 1))
alone = cfg.copy_and_resolve_references()
alone.sweep.model, alone.sweep.sign_beta, alone.sweep.seeds = ("embed_mlp",), (0.5,), (1,)
alone_dir = sweep.run_sweep(alone, "runs/alone", progress=False)
print(json.dumps(dict(
  i=i,
  programs=[[int(k) for k in p.runs] for p in s.programs],
  runs=json.loads((workdir / "runs.json").read_text()),
  batched=logs.read_metrics(workdir / "metrics.msgpack"),
  alone=logs.read_metrics(alone_dir / "metrics.msgpack"),
)))
"""


def doc_block() -> str:
  (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
  return block


@pytest.mark.slow
def test_extending_block_runs_and_a_batched_run_equals_the_run_alone(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", doc_block() + CHECK],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert "sign_beta" in out.stdout and "embed_mlp" in out.stdout  # the results table
  runs = result["runs"]
  assert {(r["model"], r["sign_beta"]) for r in runs} == {
    (m, b) for m in ("transformer", "embed_mlp") for b in (0.0, 0.5)
  }
  # one program per model, each vmapping the filter's runs beside the baseline's
  programs = result["programs"]
  assert len(programs) == 2
  for members in programs:
    assert len({runs[k]["model"] for k in members}) == 1
    assert {runs[k]["sign_beta"] for k in members} == {0.0, 0.5}
  # the filter changes training: same model and seed, different curves
  last = result["batched"][-1]["train_loss"]
  pairs = [
    (a, b)
    for a in range(8)
    for b in range(8)
    if runs[a]["seed"] == runs[b]["seed"]
    and runs[a]["model"] == runs[b]["model"]
    and runs[a]["sign_beta"] < runs[b]["sign_beta"]
  ]
  assert pairs and all(last[a] != last[b] for a, b in pairs)
  # run i of the batched program equals run i trained alone
  i = result["i"]
  for batched, alone in zip(result["batched"], result["alone"], strict=True):
    assert batched["step"] == alone["step"]
    for name in ("train_loss", "val_loss", "train_acc", "val_acc", "param_norm"):
      np.testing.assert_allclose(batched[name][i], alone[name][0], rtol=1e-5, atol=1e-7)
  assert (tmp_path / "runs" / "extending" / "figures" / "curves.png").exists()
