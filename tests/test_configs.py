"""Every shipped config (and each of its settings) validates and builds its run grid."""

import runpy
from pathlib import Path

import numpy as np
import pytest

from grokjax import plan
from grokjax.errors import UserError

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
  ("phase.py", None, 36),
  ("phase.py", "paper", 512),
  ("phase.py", "omnigrok", 512),
]


@pytest.mark.parametrize("name, arg, n_runs", SHIPPED)
def test_shipped_configs_build(name, arg, n_runs):
  get_config = runpy.run_path(str(ROOT / "configs" / name))["get_config"]
  cfg = get_config(arg) if arg else get_config()
  s = plan.build(cfg)
  assert len(s.runs) == n_runs
  if arg in ("grokfast", "mul97"):
    assert not s.cfg.optim.decoupled
    assert {r["variant"]: r["weight_decay"] for r in s.runs}["baseline_wd0"] == 0.0
  if name == "phase.py":
    axes = ("init_scale" if arg == "omnigrok" else "lr", "weight_decay")
    assert len(s.programs) == 1  # the whole grid is one compiled program
    for field in axes:  # log-spaced: a constant ratio between neighbours
      values = sorted({r[field] for r in s.runs})
      assert len(values) == (6 if arg is None else 16)
      assert np.ptp(np.diff(np.log(values))) < 0.01


def test_unknown_setting_of_a_config():
  get_config = runpy.run_path(str(ROOT / "configs" / "phase.py"))["get_config"]
  with pytest.raises(UserError, match="unknown setting 'omnigrock'; use configs/phase.py"):
    get_config("omnigrock")
