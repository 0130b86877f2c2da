"""Phase diagrams (Liu et al. 2022; Omnigrok, Liu et al. 2023): where grokking lives
over two hyperparameters, every setting a run of ONE compiled program.

  configs/phase.py           CPU: x + y mod 31, a small transformer, learning rate x
                             weight decay, 6 x 6 log-spaced, 1 seed, 2,000 steps
                             (about 10 minutes on two CPU cores)
  configs/phase.py:paper     GPU: the paper's transformer on x + y mod 97, 50% of the
                             table, 16 x 16 x 2 seeds = 512 runs, 20,000 steps
  configs/phase.py:omnigrok  GPU: Omnigrok's initialisation scale x weight decay, the
                             paper's transformer on x + y mod 97, 16 x 16 x 2 seeds

Each run gets a phase (grokjax.analysis.phase: comprehension, grokking, memorization,
confusion, diverged) in summary.json, and figures/phase.png draws the diagram.
"""

import numpy as np

from grokjax.config import default_config
from grokjax.errors import UserError


def logspace(lo: float, hi: float, n: int) -> tuple:
  """n log-spaced values from lo to hi, rounded to 3 significant digits."""
  return tuple(float(f"{v:.3g}") for v in np.geomspace(lo, hi, n))


def get_config(arg=None):
  config = default_config()
  config.name = "phase"
  config.op, config.p = "add", 31
  config.steps = 2000
  config.batch_size = 128
  config.model.width, config.model.num_layers = 64, 1
  config.eval_schedule, config.eval_points = "log", 40
  config.checkpoint_every = 2000
  config.sweep.train_fracs = (0.5,)
  config.sweep.seeds = (0,)
  config.sweep.lr = logspace(1e-4, 1e-1, 6)
  config.sweep.weight_decay = logspace(1e-2, 10, 6)
  if arg in ("paper", "omnigrok"):
    config.name = f"phase-{arg}"
    config.p = 97
    config.steps = 20_000
    config.batch_size = 512
    config.model.width, config.model.num_layers = 128, 2
    config.eval_schedule, config.eval_points = "log", 100
    config.checkpoint_every = 5000
    config.sweep.seeds = (0, 1)
    config.sweep.lr = logspace(1e-4, 1e-1, 16)
    config.sweep.weight_decay = logspace(1e-3, 30, 16)
  if arg == "omnigrok":
    config.sweep.lr = ()
    config.sweep.init_scale = logspace(0.1, 10, 16)
  elif arg not in (None, "", "paper"):
    raise UserError(
      f"unknown setting {arg!r}; use configs/phase.py, phase.py:paper or phase.py:omnigrok"
    )
  return config
