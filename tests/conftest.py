"""Shared fixtures: a tiny config that trains in seconds on CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import tiny_config as tiny_config_module  # noqa: E402  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
  """experiments/<name>.py with ``args`` in a subprocess, output captured as text."""
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / f"{name}.py"), *map(str, args)],
    capture_output=True,
    text=True,
    timeout=timeout,
  )


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
