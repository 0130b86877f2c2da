"""experiments/torch_reference.py, the PyTorch loop bench.py compares with: the same batch
and warmup as grokjax."""

import importlib.util
import math

import numpy as np
import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")

from grokjax import data, optim, plan  # noqa: E402


def _load():
  spec = importlib.util.spec_from_file_location(
    "torch_reference", ROOT / "experiments" / "torch_reference.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ref = _load()


def _table_and_mask(op="add", p=97, train_frac=0.5):
  table = data.make_table(op, p)
  return table, data.split_mask(len(table.labels), train_frac, 0)


@pytest.mark.parametrize(
  "batch_frac, batch_size, expected",
  [
    (0.5, 512, 512),  # the paper: N_train / 2 = 2352, capped at 512
    (0.1, 512, 470),  # int(4704 * 0.1), not min(512, 4704 // 2)
    (0.05, 512, 235),  # int(235.2)
    (1.0, 8192, 4704),  # full batch
    (0.0001, 512, 1),  # int(0.47) = 0 -> at least 1
  ],
)
def test_batch_follows_batch_frac(tiny, batch_frac, batch_size, expected):
  table, mask = _table_and_mask()
  assert mask.sum() == 4704
  cfg = tiny(batch_frac=batch_frac, batch_size=batch_size)
  assert ref.batch_size(cfg, int(mask.sum())) == expected
  loop = ref.Loop(table, mask, cfg)
  assert loop.batch == expected
  assert loop.per_epoch == max(4704 // expected, 1)


def test_batch_matches_grokjax_sweep(tiny):

  for batch_frac in (0.25, 0.5, 1.0):
    cfg = tiny(batch_frac=batch_frac, **{"sweep.train_fracs": (0.3, 0.8)})
    s = plan.build(cfg)
    for k in range(len(s.runs)):
      n_train = int(s.train_masks[k].sum())
      assert ref.batch_size(s.cfg, n_train) == s.batch_sizes[k], (batch_frac, k)


@pytest.mark.parametrize("warmup_steps", [0, 1, 10])
def test_lr_factor_is_grokjax_warmup(warmup_steps):
  factor, schedule = ref.lr_factor(warmup_steps), optim.warmup(warmup_steps)
  for t in range(15):
    assert factor(t) == pytest.approx(float(schedule(t))), t


def test_warmup_steps_zero_runs(tiny):
  table, mask = _table_and_mask("add", 7)
  cfg = tiny(**{"optim.warmup_steps": 0, "eval_every": 2})
  loop = ref.Loop(table, mask, cfg)
  assert loop.opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr)  # no warmup: full lr
  before = [p.detach().clone() for p in loop.model.parameters()]
  loop.run(3)
  after = list(loop.model.parameters())
  assert all(torch.isfinite(p).all() for p in after)
  assert any(not torch.equal(a, b) for a, b in zip(after, before))
  assert loop.opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr)
  rate = ref.steps_per_second(table, mask, cfg, steps=2)
  assert math.isfinite(rate) and rate > 0


def test_batches_cover_the_train_rows_once_per_epoch(tiny):
  table, mask = _table_and_mask("add", 7)
  cfg = tiny(batch_frac=0.25)
  loop = ref.Loop(table, mask, cfg)
  n_train = int(mask.sum())
  assert loop.batch == int(n_train * 0.25) and loop.per_epoch == n_train // loop.batch
  seen, forward = [], loop.model.forward

  def recording(tokens):
    seen.append(tokens[:, 0] * 1000 + tokens[:, 2])  # x, y identify a row
    return forward(tokens)

  loop.model.forward = recording
  loop.run(loop.per_epoch)
  rows = torch.cat(seen[: loop.per_epoch]).numpy()
  assert all(len(b) == loop.batch for b in seen[: loop.per_epoch])
  assert len(np.unique(rows)) == len(rows)  # no train row twice in an epoch
  train_keys = set((table.inputs[mask, 0] * 1000 + table.inputs[mask, 2]).tolist())
  assert set(rows.tolist()) <= train_keys
