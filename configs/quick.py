"""A CPU demo that groks in about a minute: x + y mod 31 at half the table.

Train accuracy reaches 99% within ~100 steps; validation accuracy follows a few
thousand steps later. A smaller p and a shorter budget than the paper, same model
and optimizer otherwise.
"""

from grokjax.config import default_config


def get_config():
  config = default_config()
  config.name = "quick"
  config.op = "add"
  config.p = 31
  config.steps = 3000
  config.eval_every = 50
  config.checkpoint_every = 1000
  config.sweep.train_fracs = (0.5,)
  config.sweep.seeds = (0, 1, 2)
  return config
