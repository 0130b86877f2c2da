"""Every shipped config (and each of its settings) validates and builds its run grid."""

import runpy
from pathlib import Path

import pytest

from grokjax import sweep

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
  ("div.py", None, 27),
  ("quick.py", None, 3),
  ("ops.py", "s5", 27),
  ("interp.py", None, 3),
  ("interp.py", "paper", 3),
  ("variants.py", None, 21),
  ("variants.py", "grokfast", 15),
  ("variants.py", "mul97", 15),
]


@pytest.mark.parametrize("name, arg, n_runs", SHIPPED)
def test_shipped_configs_build(name, arg, n_runs):
  get_config = runpy.run_path(str(ROOT / "configs" / name))["get_config"]
  cfg = get_config(arg) if arg else get_config()
  s = sweep.build(cfg)
  assert len(s.runs) == n_runs
  if arg in ("grokfast", "mul97"):
    assert not s.cfg.optim.decoupled
    assert {r["variant"]: r["weight_decay"] for r in s.runs}["baseline_wd0"] == 0.0
