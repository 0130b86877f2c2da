"""Every shipped config, shrunk to a few steps: the cases of the golden-metrics test."""

import runpy
from pathlib import Path

from grokjax import logs, sweep

ROOT = Path(__file__).resolve().parent.parent
# "file[:arg]" -> steps: few, CI runs them all (Grokfast-MA's filter acts after its
# 100-gradient window; tests/test_methods.py checks it against numpy).
CASES = {
  "div.py": 4,
  "ops.py:s5": 2,
  "quick.py": 12,
  "interp.py": 6,
  "interp.py:paper": 2,
  "variants.py": 12,
  "variants.py:grokfast": 4,
  "variants.py:mul97": 2,
}


def config(case: str):
  name, _, arg = case.partition(":")
  get = runpy.run_path(str(ROOT / "configs" / name))["get_config"]
  cfg = get(arg) if arg else get()
  cfg.steps = CASES[case]
  cfg.eval_every = max(1, cfg.steps // 2)
  cfg.interp = False
  # One run per vmap group: the exact layout whose numbers the old code, which vmapped
  # runs in groups of any size, also computed (a run alone), so the golden stays its.
  cfg.vmap_group = 1
  return cfg


def metrics(case: str, workdir) -> list[dict]:
  """The metric records of ``case`` trained into ``workdir``."""
  sweep.run_sweep(config(case), Path(workdir) / "run", progress=False)
  return logs.read_metrics(Path(workdir) / "run" / "metrics.msgpack")
