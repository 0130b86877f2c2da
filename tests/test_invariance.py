"""A run's numbers depend on its config and seed alone: not on how many runs share its
program, which runs are its neighbours in a vmap group, nor the device count.

Every run is computed in a vmap group of exactly ``vmap_group`` runs (the run axis is
padded with copies of the last run); these tests hold that, bit for bit, on CPU (on 4
devices: tests/test_sharding.py).
"""

import runpy
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import leaf_bytes

from grokjax import layout, logs, plan, rundir, sweep

ROOT = Path(__file__).resolve().parent.parent


def _quick(seeds):
  """configs/quick.py shrunk to 100 steps and 5 evaluations."""
  cfg = runpy.run_path(str(ROOT / "configs" / "quick.py"))["get_config"]()
  cfg.steps, cfg.eval_points, cfg.checkpoint_every = 100, 4, 100
  cfg.sweep.seeds = seeds
  return cfg


@pytest.mark.slow
def test_seed_1_equals_itself_alone(tmp_path):
  """Seed 1 of a 3-seed quick sweep and seed 1 trained alone: the same metrics and final
  parameters, bit for bit. (On 4 devices: tests/test_sharding.py, on the runs its
  4-device tests train.)"""
  assert layout.vmap_group(_quick((0,))) == 1  # CPU's default: the exact layout
  three = sweep.run_sweep(_quick((0, 1, 2)), tmp_path / "three", progress=False)
  alone = sweep.run_sweep(_quick((1,)), tmp_path / "alone", progress=False)
  workdirs = {"three": (three, 1), "alone": (alone, 0)}
  logged = {name: logs.read_metrics(w / "metrics.msgpack") for name, (w, _) in workdirs.items()}
  ref = logged["alone"]
  assert len(ref) == 5 and ref[-1]["step"] == 100
  got = logged["three"]
  assert [r["step"] for r in got] == [r["step"] for r in ref]
  for g, want in zip(got, ref):
    assert set(g) == set(want)
    for metric in (m for m in want if m != "step"):
      assert g[metric][1] == want[metric][0], (metric, g["step"])
  # A loss that moved at all: Adam's spikes amplify any difference in the last bit.
  assert ref[-1]["train_loss"][0] < 0.5 * ref[0]["train_loss"][0]
  params = {name: rundir.load(w).params()[k] for name, (w, k) in workdirs.items()}
  assert leaf_bytes(params["three"]) == leaf_bytes(params["alone"])


@pytest.mark.slow
def test_position_in_a_group_and_padding_change_no_bit(tiny):
  """Groups of 2 (``vmap_group=2``): run 1 with run 0, with run 2, first or second of its
  pair, or with its own padding copy, gives the same bits (the other runs' too, wherever
  they sit). On one CPU the groups run one program: 3 runs (2 groups) and 1 run (1)
  compile it once."""
  s = plan.build(tiny(**{"sweep.seeds": (0, 1, 2), "sweep.train_fracs": (0.5,)}))
  prog = s.programs[0]
  runs = plan.run_arrays(s, prog)
  init, chunk = layout.make_sweep_fns(prog.static, None, 2)
  got = {}
  for order in ([0, 1, 2], [2, 1, 0], [1]):
    sub = jax.tree.map(lambda x, o=order: x[np.asarray(o)], runs)
    states, metrics = chunk(s.table, sub, init(s.table, sub), 30)
    for j, k in enumerate(order):
      bits = leaf_bytes(jax.tree.map(lambda x, j=j: x[j], (states, metrics)))
      assert got.setdefault(k, bits) == bits, (order, k)
  assert chunk._jit._cache_size() == 1  # one compiled chunk for K = 3 and K = 1
