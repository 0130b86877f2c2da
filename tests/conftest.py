"""Shared fixtures: a tiny config that trains in seconds on CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
import tiny_config as tiny_config_module  # noqa: E402  (tests/ is on sys.path)


def tiny_config(**overrides):
  """The tiny config with dotted-key overrides, e.g. tiny_config(**{"model.width": 16})."""
  cfg = tiny_config_module.get_config()
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
