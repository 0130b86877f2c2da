"""Shared fixtures: a tiny config that trains in seconds on CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from grokjax.config import default_config  # noqa: E402


def tiny_config(**overrides):
  """add mod 7 with a one-layer width-32 transformer: compiles and trains in seconds."""
  cfg = default_config()
  cfg.name = "tiny"
  cfg.op, cfg.p = "add", 7
  cfg.steps, cfg.eval_every, cfg.checkpoint_every = 40, 10, 20
  cfg.model.num_layers, cfg.model.width, cfg.model.num_heads = 1, 32, 2
  cfg.sweep.seeds, cfg.sweep.train_fracs = (0, 1), (0.5, 0.8)
  for key, value in overrides.items():
    node = cfg
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return cfg


@pytest.fixture
def tiny():
  return tiny_config
