"""Progress measures (Nanda et al. 2023) on a sweep that keeps its checkpoints.

``get_config()`` (CPU, ~2 minutes): x + y mod 31 with 60% of the table, the paper's
2-layer model and AdamW (wd 1), batch 128, 3 seeds; training accuracy reaches 99%
within ~100 steps, validation accuracy after ~1-2k. A checkpoint every 100 steps,
all kept: the sweep ends by computing the Fourier measures at every one of them
(``config.interp``); ``python experiments/interp.py RUN_DIR`` does it again.

``get_config("paper")`` (GPU): Nanda et al.'s setting, x + y mod 113 with 30% of the
table, 1 layer, width 128, 4 heads, full-batch AdamW lr 1e-3, wd 1, betas
(0.9, 0.98), 40k steps, a checkpoint every 500 steps.
"""

from grokjax.config import default_config
from grokjax.errors import UserError


def get_config(arg=None):
  config = default_config()
  config.name = "interp"
  config.interp = True  # the sweep ends by writing the progress-measure figures
  config.op = "add"
  config.p = 31
  config.steps = 3000
  config.batch_size = 128
  config.eval_schedule = "log"
  config.eval_points = 150
  config.checkpoint_every = 100  # the measures' time resolution
  config.checkpoint_keep = 1000  # keep them all
  config.sweep.train_fracs = (0.6,)
  config.sweep.seeds = (0, 1, 2)
  if arg == "paper":
    config.name = "interp-paper"
    config.p = 113
    config.steps = 40_000
    config.batch_frac = 1.0  # full batch: N_train = 3,830 rows
    config.batch_size = 4096
    config.checkpoint_every = 500
    config.model.num_layers = 1
    config.model.width = 128
    config.model.num_heads = 4
    config.sweep.train_fracs = (0.3,)
  elif arg not in (None, "", "cpu"):
    raise UserError(f"unknown variant {arg!r}; use configs/interp.py or configs/interp.py:paper")
  return config
