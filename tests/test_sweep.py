import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from grokjax import logs

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "tiny_config.py")


def sweep_cli(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "sweep.py"), *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=env,
    timeout=300,
  )


def snapshot(d: Path):
  return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep") / "run"
  out = sweep_cli("--config", TINY, "--workdir", str(workdir))
  assert out.returncode == 0, out.stderr
  return workdir, out


def test_run_directory(finished):
  workdir, out = finished
  config = json.loads((workdir / "config.json").read_text())
  assert config["op"] == "add" and config["p"] == 7 and config["steps"] == 40
  runs = json.loads((workdir / "runs.json").read_text())
  assert [r["index"] for r in runs] == [0, 1, 2, 3]
  assert {(r["train_frac"], r["seed"]) for r in runs} == {(0.5, 0), (0.5, 1), (0.8, 0), (0.8, 1)}
  assert all(r["lr"] == 1e-3 and r["weight_decay"] == 1.0 and r["op"] == "add" for r in runs)

  splits = np.load(workdir / "splits.npz")
  assert splits["inputs"].shape == (49, 4) and splits["labels"].shape == (49,)
  masks = splits["train_masks"]
  assert masks.shape == (4, 49)
  assert [int(m.sum()) for m in masks] == [round(r["train_frac"] * 49) for r in runs]

  with open(workdir / "metrics.msgpack", "rb") as f:
    records = list(msgpack.Unpacker(f))
  assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
  for r in records:
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "param_norm"):
      assert len(r[name]) == 4 and all(isinstance(x, float) for x in r[name])
  assert records[-1]["train_loss"][0] < records[0]["train_loss"][0]  # it learned something

  summary = json.loads((workdir / "summary.json").read_text())
  assert [s["index"] for s in summary] == [0, 1, 2, 3]
  assert summary[0]["final_val_acc"] == records[-1]["val_acc"][0]
  assert (workdir / "checkpoints").is_dir()
  assert "run directory" in out.stdout and "train>=thr" in out.stdout  # the results table


@pytest.mark.slow
def test_finished_sweep_says_so(finished):
  workdir, _ = finished
  before = snapshot(workdir)
  out = sweep_cli("--config", TINY, "--workdir", str(workdir))
  assert out.returncode == 0 and "finished" in out.stdout
  assert snapshot(workdir).keys() == before.keys()
  assert (workdir / "metrics.msgpack").read_bytes() == before[workdir / "metrics.msgpack"]


def test_workdir_of_another_sweep_is_refused(finished):
  workdir, _ = finished
  before = snapshot(workdir)
  out = sweep_cli("--config", TINY, "--workdir", str(workdir), "--config.optim.lr=0.01")
  assert out.returncode == 2
  assert "holds a different sweep (changed: optim)" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  assert snapshot(workdir) == before


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--config.op=mod"], "unknown op 'mod'; choose one of"),
    (["--config.sweep.train_fracs=0.5,1.5"], "sweep.train_fracs=1.5 must be in (0, 1); fix"),
    (["--config.op=div", "--config.p=91"], "p must be prime but p=91"),
    (["--config.p=1"], "p=1 must be >= 2; fix --config.p"),
    (["--config.batch_size=0"], "batch_size=0 must be > 0; fix --config.batch_size"),
    (["--config.stpes=10"], "stpes"),
    (["--config.sweep.seeds=-1"], "sweep.seeds=-1 must be >= 0; fix --config.sweep.seeds"),
    (["--config.model.name=rnn"], "model.name='rnn' is unknown; choose one of: transformer, mlp"),
    (["--config.sweep.lr=0"], "sweep.lr=0.0 must be > 0; fix --config.sweep.lr"),
    (["extra_arg"], "unexpected arguments"),
  ],
)
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(tmp_path, flags, message):
  workdir = tmp_path / "w"
  out = sweep_cli("--config", TINY, "--workdir", str(workdir), *flags)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
  assert not workdir.exists()


def test_missing_config_file(tmp_path):
  out = sweep_cli("--config", str(tmp_path / "nope.py"))
  assert out.returncode == 2
  assert len(out.stderr.strip().splitlines()) == 1 and "nope.py" in out.stderr


def test_non_sweep_directory_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  out = sweep_cli("--config", TINY, "--workdir", str(tmp_path))
  assert out.returncode == 2 and "holds no grokjax sweep" in out.stderr
  assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_one_compilation_for_the_whole_sweep(tmp_path, tiny, caplog):
  # Log-spaced evaluation: chunks of many different lengths, two train fractions.
  import jax

  from grokjax import sweep

  cfg = tiny(eval_schedule="log", eval_points=12)
  with jax.log_compiles(), caplog.at_level("WARNING", logger="jax"):
    sweep.run_sweep(cfg, tmp_path / "w", progress=False)
  compiled = [
    r.getMessage()
    for r in caplog.records
    if r.getMessage().startswith("Finished XLA compilation of jit(chunk)")
  ]
  assert len(compiled) == 1
  steps = [r["step"] for r in logs.read_metrics(tmp_path / "w" / "metrics.msgpack")]
  assert len(set(np.diff(steps))) > 3  # the chunks really had different lengths


@pytest.mark.slow
def test_several_operations_in_one_program(tmp_path, tiny):
  from grokjax import sweep

  both = sweep.run_sweep(
    tiny(**{"sweep.ops": ("add", "division")}), tmp_path / "both", progress=False
  )
  runs = json.loads((both / "runs.json").read_text())
  assert [r["op"] for r in runs] == ["add"] * 4 + ["div"] * 4
  splits = np.load(both / "splits.npz")
  assert splits["inputs"].shape == (49 + 42, 4)  # div skips y = 0
  assert not (splits["train_masks"] & splits["val_masks"]).any()
  assert ((splits["train_masks"] | splits["val_masks"]).sum(1) == [49] * 4 + [42] * 4).all()
  mixed = logs.read_metrics(both / "metrics.msgpack")
  for i, op in enumerate(("add", "div")):
    alone = sweep.run_sweep(tiny(op=op), tmp_path / op, progress=False)
    for m, a in zip(mixed, logs.read_metrics(alone / "metrics.msgpack"), strict=True):
      for name in ("train_loss", "val_acc", "val_loss"):
        np.testing.assert_allclose(m[name][4 * i : 4 * i + 4], a[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_ops_flag_parses_a_comma_list(tmp_path):
  out = sweep_cli(
    "--config",
    TINY,
    "--workdir",
    str(tmp_path / "w"),
    "--config.sweep.ops=add,sub",
    "--config.steps=2",
    "--config.eval_every=1",
  )
  assert out.returncode == 0, out.stderr
  runs = json.loads((tmp_path / "w" / "runs.json").read_text())
  assert sorted({r["op"] for r in runs}) == ["add", "sub"]
  bad = sweep_cli("--config", TINY, "--workdir", str(tmp_path / "v"), "--config.sweep.ops=add,mod")
  assert bad.returncode == 2 and "unknown op 'mod'" in bad.stderr
