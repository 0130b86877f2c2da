"""Shared fixtures: a tiny config that trains in seconds on CPU."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the whole test session: its workers (pytest-xdist
# starts them with this environment) and every script a test runs in a subprocess.
# Many tests train the same tiny programs; each is compiled once. A cached program is
# the compiled program itself: the numbers are the same bits. A size limit makes JAX
# read and write entries under a file lock (filelock), so that no process reads an
# entry another is writing. That limit makes each write read every entry's access time
# (JAX's LRU eviction): a cache of thousands of eager ops (0.2 s to compile, or less) made
# the writes cost more than compiling those ops again, so they are not written.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="grokjax-tests-xla-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def killable_env(**extra) -> dict:
  """The environment for a script a test kills at a random moment: it reads the shared
  compilation cache but writes no entry to it (JAX writes an entry in place: a kill
  mid-write would leave a torn entry that every later reader warns about). A read holds
  the cache's file lock, which the kernel releases when the process dies."""
  return {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9", **extra}


import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tiny_config as tiny_config_module  # noqa: E402  (tests/ is on sys.path)

from grokjax import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
  """experiments/<name>.py with ``args`` in a subprocess, output captured as text."""
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / f"{name}.py"), *map(str, args)],
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def leaf_bytes(tree) -> list[bytes]:
  """Every leaf's bytes: two trees with equal lists are equal bit for bit."""
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


# Models, evaluation and initial states as ONE compiled program each: called outside jit,
# JAX compiles every operation on its own, which costs the suite minutes.


def logits_of(model, params, inputs):
  return jax.jit(model.apply)({"params": params}, inputs)


def evaluated(static, table, run, params, float64=False) -> dict:
  """``train.evaluate`` (with ``float64``, call it under ``jax.enable_x64(True)``)."""
  return jax.jit(lambda t, r, p: train.evaluate(static, t, r, p, float64))(table, run, params)


def initial_state(static, table, run):
  return jax.jit(lambda t, r: train.init_state(static, t, r))(table, run)


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Which tests share a worker under pytest-xdist (``--dist loadgroup``): a file's
  tests stay together (they share module fixtures), but the long files are split:
  test_docs.py per doc page (a page's commands build on each other),
  test_golden.py per config and test_bench.py per test (no shared fixtures: the
  gpu_check dry run, the bench time limit), so two workers finish together."""
  for item in items:
    name = item.path.name
    if name == "test_docs.py" and hasattr(item, "callspec"):
      group = "docs:" + item.callspec.id.split(":")[0]
    elif name == "test_golden.py" and hasattr(item, "callspec"):
      group = "golden:" + item.callspec.id
    elif name == "test_bench.py":
      group = "bench:" + item.name
    else:
      group = name
    item.add_marker(pytest.mark.xdist_group(group))


def pytest_terminal_summary(terminalreporter):
  """Names the golden comparison this machine got (tests/test_golden.py), also under -q."""
  if any(
    "test_golden.py::test_shipped" in r.nodeid
    for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
  ):
    from test_golden import comparison

    terminalreporter.write_line(comparison()[1])
