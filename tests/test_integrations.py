"""wandb and TensorBoard, each replaced by a fake module at its API boundary."""

import sys
import types

import pytest

from grokjax import config, integrations, logs, rundir, sweep
from grokjax.errors import UserError

RUNS = [dict(index=i, op="add", p=7, train_frac=0.5, seed=i) for i in range(2)]
RECORDS = [
  {"step": 0, "train_acc": [0.1, 0.2], "val_loss": [3.0, 3.5]},
  {"step": 10, "train_acc": [0.9, 1.0], "val_loss": [2.0, float("nan")]},
]


class FakeWandbRun:
  def __init__(self, kwargs):
    self.kwargs, self.logged, self.finished = kwargs, [], False

  def log(self, data, step=None):
    self.logged.append((step, dict(data)))

  def finish(self):
    self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
  """A ``wandb`` module whose init returns recording runs."""
  module = types.ModuleType("wandb")
  module.runs = []

  def init(**kwargs):
    module.runs.append(FakeWandbRun(kwargs))
    return module.runs[-1]

  module.init = init
  monkeypatch.setitem(sys.modules, "wandb", module)
  return module


class FakeSummaryWriter:
  def __init__(self, logdir):
    self.logdir, self.scalars, self.texts, self.closed, self.flushes = logdir, [], [], False, 0
    FakeSummaryWriter.made.append(self)

  def add_scalar(self, tag, value, global_step=None):
    self.scalars.append((tag, value, global_step))

  def add_text(self, tag, text, global_step=None):
    self.texts.append((tag, text))

  def flush(self):
    self.flushes += 1

  def close(self):
    self.closed = True


@pytest.fixture
def fake_tbx(monkeypatch):
  module = types.ModuleType("tensorboardX")
  FakeSummaryWriter.made = []
  module.SummaryWriter = FakeSummaryWriter
  monkeypatch.setitem(sys.modules, "tensorboardX", module)
  return FakeSummaryWriter


def logging_config(**log):
  cfg = config.default_config()
  cfg.log.update(log)
  return cfg


def test_off_by_default(fake_wandb, fake_tbx, tmp_path):
  cfg = config.default_config()
  assert (cfg.log.wandb, cfg.log.tensorboard, cfg.log.wandb_project) == (False, False, "grokking")
  writer = integrations.make_writer(cfg, RUNS, tmp_path)
  for r in RECORDS:
    writer.write(r)
  writer.close()
  assert writer.writers == [] and fake_wandb.runs == [] and fake_tbx.made == []


def test_wandb_one_run_per_grokjax_run(fake_wandb, tmp_path):
  cfg = logging_config(wandb=True, wandb_project="proj")
  writer = integrations.make_writer(cfg, RUNS, tmp_path / "sweep-1")
  assert fake_wandb.runs == []  # nothing opened before the first record
  for r in RECORDS:
    writer.write(r)
  writer.close()
  assert len(fake_wandb.runs) == 2
  for k, run in enumerate(fake_wandb.runs):
    kw = run.kwargs
    assert kw["project"] == "proj" and kw["group"] == "sweep-1" and kw["name"] == f"sweep-1-run{k}"
    assert kw["reinit"] == "create_new" and kw["resume"] == "allow"
    assert kw["config"]["seed"] == k and kw["config"]["train_frac"] == 0.5
    assert kw["config"]["optim"]["weight_decay"] == 1.0 and kw["config"]["log"]["wandb"] is True
    assert [step for step, _ in run.logged] == [0, 10]
    assert run.logged[1][1]["train_acc"] == RECORDS[1]["train_acc"][k]
    assert "step" not in run.logged[0][1]
    assert run.finished
  assert fake_wandb.runs[0].kwargs["id"] != fake_wandb.runs[1].kwargs["id"]
  # the same run directory resumes the same wandb runs
  again = integrations.make_writer(cfg, RUNS, tmp_path / "sweep-1")
  again.write(RECORDS[0])
  assert [r.kwargs["id"] for r in fake_wandb.runs[2:]] == [
    r.kwargs["id"] for r in fake_wandb.runs[:2]
  ]


def test_tensorboard_event_dir_per_run(fake_tbx, tmp_path):
  writer = integrations.make_writer(logging_config(tensorboard=True), RUNS, tmp_path)
  for r in RECORDS:
    writer.write(r)
  writer.close()
  assert [w.logdir for w in fake_tbx.made] == [
    str(tmp_path / "tensorboard" / "run000"),
    str(tmp_path / "tensorboard" / "run001"),
  ]
  second = fake_tbx.made[1]
  assert second.scalars[:2] == [("train_acc", 0.2, 0), ("val_loss", 3.5, 0)]
  assert second.scalars[2][:2] == ("train_acc", 1.0) and second.scalars[2][2] == 10
  assert len(second.scalars) == 4 and second.flushes == 2 and second.closed
  assert second.texts[0][0] == "config" and '"seed": 1' in second.texts[0][1]


@pytest.mark.parametrize("key, module", [("wandb", "wandb"), ("tensorboard", "tensorboardX")])
def test_missing_library_is_a_user_error(monkeypatch, tmp_path, key, module):
  monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
  with pytest.raises(UserError, match=rf"log.{key}=True needs the {module} package.*grokjax\["):
    integrations.make_writer(logging_config(**{key: True}), RUNS, tmp_path)


@pytest.mark.slow
def test_sweep_logs_every_record(fake_wandb, fake_tbx, tmp_path, tiny):
  cfg = tiny(**{"log.wandb": True, "log.tensorboard": True})
  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  records = logs.read_metrics(workdir / "metrics.msgpack")
  assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
  assert len(fake_wandb.runs) == 4 and len(fake_tbx.made) == 4
  runs = rundir.load(workdir).runs
  for k, run in enumerate(fake_wandb.runs):
    assert run.kwargs["config"]["train_frac"] == runs[k]["train_frac"] and run.finished
    assert [step for step, _ in run.logged] == [0, 10, 20, 30, 40]
    assert [d["val_acc"] for _, d in run.logged] == [r["val_acc"][k] for r in records]
  assert all(w.closed and len(w.scalars) == 5 * (len(records[0]) - 1) for w in fake_tbx.made)
  # training writes the log and the checkpoints, nothing else: reporting is a step of its own
  assert not (workdir / "figures").exists() and not (workdir / "summary.json").exists()
