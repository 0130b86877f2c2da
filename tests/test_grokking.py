"""Real grokking on CPU: the quick demo memorises first and generalises much later."""

import runpy
from pathlib import Path

import pytest

from grokjax import analysis, logs, sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_config_groks(tmp_path):
  # The demo's shortest run that still shows it: two of its seeds, to step 2,500 (they
  # reach 99% validation accuracy at ~2,000-2,200 on the CPUs measured; a seed's numbers
  # do not depend on the others, nor training on the evaluation schedule).
  cfg = runpy.run_path(str(ROOT / "configs" / "quick.py"))["get_config"]()
  cfg.sweep.seeds, cfg.steps = (0, 1), 2500
  workdir = sweep.run_sweep(cfg, tmp_path / "quick", progress=False)
  m = analysis.as_arrays(logs.read_metrics(workdir / "metrics.msgpack"))
  train_at = analysis.first_step(m["step"], m["train_acc"], 0.99)
  val_at = analysis.first_step(m["step"], m["val_acc"], 0.99)
  assert all(t is not None and t <= 200 for t in train_at), train_at  # memorised early
  grokked = [(t, v) for t, v in zip(train_at, val_at) if v is not None]
  assert len(grokked) == 2, val_at  # both seeds generalise within the budget...
  for t, v in grokked:
    assert v >= 10 * t and v >= 500, (t, v)  # ...long after memorising
  for k, t in enumerate(train_at):  # when memorised, validation is far from it
    assert m["val_acc"][list(m["step"]).index(t), k] < 0.5
