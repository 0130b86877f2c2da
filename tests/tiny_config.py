"""add mod 7 with a one-layer width-32 transformer: a sweep of 4 runs in seconds."""

from grokjax.config import default_config


def get_config():
  cfg = default_config()
  cfg.name = "tiny"
  cfg.op, cfg.p = "add", 7
  cfg.steps, cfg.eval_every, cfg.checkpoint_every = 40, 10, 20
  cfg.model.num_layers, cfg.model.width, cfg.model.num_heads = 1, 32, 2
  cfg.sweep.seeds, cfg.sweep.train_fracs = (0, 1), (0.5, 0.8)
  return cfg
