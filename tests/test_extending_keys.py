"""Every kind's declared keys reach its code (docs/extending.md's promise): a loss key
(per run and static), a model key whose sweep axis differs from its path, and an
optimizer of a user's own, labelled by its registry entry in the figures."""

import flax.linen as nn
import numpy as np
import optax
import pytest
from conftest import tiny_config

from grokjax import logs, plan, plots, registry, rundir, sweep
from grokjax.registry import Key, Loss, Model, Optimizer


@pytest.fixture
def registered():
  """Registers entries as a user's file would, and removes them afterwards."""
  saved = {id(t): dict(t) for t in registry._KINDS.values()}
  yield lambda entry: registry.register(entry)
  for table in registry._KINDS.values():
    table.clear()
    table.update(saved[id(table)])


def smoothed(logits_BxC, labels_B, smoothing, power):
  """Label-smoothed cross-entropy, the smoothed targets raised to ``power`` (static)."""
  n = logits_BxC.shape[-1]
  target = optax.smooth_labels(nn.one_hot(labels_B, n), smoothing) ** power
  return optax.softmax_cross_entropy(logits_BxC, target)


def smoothing_loss():
  return Loss(
    "smoothed",
    smoothed,
    "label smoothing",
    keys=(
      Key("loss.smoothing", 0.0, "label smoothing", per_run=True),
      Key("loss.power", 1, "static power of the targets"),
    ),
  )


def tiny(**kw):
  cfg = tiny_config(**{"sweep.train_fracs": (0.8,), "sweep.seeds": (0,), "steps": 20, **kw})
  return cfg


def test_a_per_run_loss_key_reaches_the_loss(registered, tmp_path):
  registered(smoothing_loss())
  cfg = tiny(**{"method.loss": "smoothed"})
  cfg.sweep.smoothing = (0.0, 0.3)
  s = plan.build(cfg)
  assert len(s.programs) == 1  # per run: one program, the value on the run axis
  arrays = plan.run_arrays(s, s.programs[0])
  assert np.allclose(arrays.hparams["smoothing"], [0.0, 0.3])
  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  loss = logs.read_metrics(workdir / "metrics.msgpack")[-1]["train_loss"]
  assert loss[0] != loss[1]
  # smoothing 0 is plain cross-entropy: the same numbers as the built-in softmax loss
  plain = sweep.run_sweep(tiny(), tmp_path / "plain", progress=False)
  want = logs.read_metrics(plain / "metrics.msgpack")[-1]["train_loss"][0]
  assert loss[0] == pytest.approx(want, rel=1e-5)


def test_a_static_loss_key_makes_programs(registered):
  registered(smoothing_loss())
  cfg = tiny(**{"method.loss": "smoothed"})
  cfg.sweep.power = (1, 2)
  s = plan.build(cfg)
  assert len(s.programs) == 2
  assert sorted(p.static.values["power"] for p in s.programs) == [1, 2]


class Wide(nn.Module):
  num_classes: int
  hidden: int

  @nn.compact
  def __call__(self, tokens_BxT):
    h = nn.Embed(64, 8)(tokens_BxT).reshape(tokens_BxT.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(h)))


def test_a_model_key_with_its_own_axis(registered):
  registered(
    Model(
      "wide",
      (Key("model.hidden_units", 16, "hidden units", axis="hidden"),),
      lambda vocab_size, num_classes, hidden: Wide(num_classes, hidden),
    )
  )
  cfg = tiny(**{"model.name": "wide"})
  cfg.sweep.hidden = (8, 24)
  s = plan.build(cfg)
  assert sorted(p.static.model.hidden for p in s.programs) == [8, 24]
  assert [r["hidden"] for r in s.runs] == [8, 24]


def sgd(filters, sgd_lr):
  return optax.chain(*filters, optax.sgd(sgd_lr))


def test_a_user_optimizer_is_labelled_by_its_entry(registered, tmp_path):
  registered(
    Optimizer("sgd", (Key("optim.sgd_lr", 0.1, "SGD lr", per_run=True),), sgd, label="SGD")
  )
  cfg = tiny(**{"optim.name": "sgd"})
  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  label = plots.sweep_label(rundir.load(workdir))
  assert "SGD" in label and "AdamW" not in label and "β" not in label
  # and the built-in optimizer keeps its words
  adamw = sweep.run_sweep(tiny(), tmp_path / "adamw", progress=False)
  assert "AdamW lr 0.001, weight decay 1 (β 0.9/0.98)" in plots.sweep_label(rundir.load(adamw))
