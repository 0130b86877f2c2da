import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import killable_env

from grokjax import logs, report, rundir, sweep
from grokjax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "tiny_config.py")


def _cli(workdir, *flags):
  return [
    sys.executable,
    str(ROOT / "experiments" / "sweep.py"),
    "--config",
    TINY,
    "--workdir",
    str(workdir),
    *flags,
  ]


def _params(workdir, k):
  return [rundir.load_run(workdir, run=i).params for i in range(k)]


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_is_exact(tmp_path):
  flags = ("--config.steps=3000", "--config.eval_every=50", "--config.checkpoint_every=500")
  env = killable_env(JAX_PLATFORMS="cpu")  # killed at a random moment
  ref = tmp_path / "ref"
  subprocess.run(_cli(ref, *flags), check=True, capture_output=True, env=env)

  crashed = tmp_path / "crashed"
  proc = subprocess.Popen(
    _cli(crashed, *flags), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
  )
  # A random moment of training: once the log passes a random step past the first
  # checkpoint, SIGKILL at once (mid-chunk, mid-save or mid-write, wherever it is).
  kill_after = random.randrange(500, 2500, 50)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    logged = logs.read_metrics(crashed / "metrics.msgpack")
    if logged and logged[-1]["step"] >= kill_after:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the sweep ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  logged = logs.read_metrics(crashed / "metrics.msgpack")
  assert 0 < logged[-1]["step"] < 3000

  out = subprocess.run(_cli(crashed, *flags), capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr
  with open(ref / "metrics.msgpack", "rb") as a, open(crashed / "metrics.msgpack", "rb") as b:
    assert a.read() == b.read()  # every value equal, no point logged twice or lost
  _assert_same_params(_params(ref, 4), _params(crashed, 4))


@pytest.mark.slow
def test_resume_drops_a_torn_record_and_lost_checkpoint(tmp_path, tiny):
  ref = sweep.run_sweep(tiny(), tmp_path / "ref", progress=False)
  report.report(ref)
  crashed = tmp_path / "crashed"
  shutil.copytree(ref, crashed)
  # A crash after step 30 was logged but before the step-40 checkpoint finished,
  # mid-write of the step-40 record.
  shutil.rmtree(crashed / "checkpoints" / "40")
  raw = (crashed / "metrics.msgpack").read_bytes()
  (crashed / "metrics.msgpack").write_bytes(raw[:-7])
  (crashed / "summary.json").unlink()
  report.report(sweep.run_sweep(tiny(), crashed, progress=False))
  assert (crashed / "metrics.msgpack").read_bytes() == raw
  assert json.loads((crashed / "summary.json").read_text()) == json.loads(
    (ref / "summary.json").read_text()
  )
  _assert_same_params(_params(ref, 4), _params(crashed, 4))
  # The same crash in a run directory of an older checkpoint format (1: every program
  # held the built-in methods): refused in one line, nothing moved, cut or rewritten.
  old = tmp_path / "old"
  shutil.copytree(ref, old)
  shutil.rmtree(old / "checkpoints" / "40")
  (old / "metrics.msgpack").write_bytes(raw[:-7])
  (step,) = [p.name for p in (old / "checkpoints").iterdir()]
  meta = old / "checkpoints" / step / "meta" / "metadata"
  saved = json.loads(meta.read_text())
  meta.write_text(json.dumps({k: v for k, v in saved.items() if k != "format"}))
  files = lambda d: {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
  before = files(old)
  with pytest.raises(UserError, match="checkpoint format 1, this version reads format 2") as e:
    sweep.run_sweep(tiny(), old, progress=False)
  assert "\n" not in str(e.value) and "new --workdir" in str(e.value)
  with pytest.raises(UserError, match="checkpoint format 1"):
    rundir.load_run(old, 0)  # report, interp and notebooks read it the same way
  assert files(old).keys() - {old / ".lock"} == before.keys() - {old / ".lock"}
  assert all(files(old)[p] == b for p, b in before.items() if p.name != ".lock")


@pytest.mark.slow
def test_reconfigure_extends_a_finished_sweep(tmp_path, tiny):
  straight = sweep.run_sweep(tiny(steps=60), tmp_path / "straight", progress=False)
  extended = sweep.run_sweep(tiny(), tmp_path / "extended", progress=False)
  with pytest.raises(UserError, match="pass --reconfigure"):
    sweep.run_sweep(tiny(steps=60), extended, progress=False)
  with pytest.raises(UserError, match="only .* may change"):
    sweep.run_sweep(tiny(steps=60, **{"optim.lr": 0.1}), extended, reconfigure=True, progress=False)
  sweep.run_sweep(tiny(steps=60), extended, reconfigure=True, progress=False)
  a = logs.read_metrics(straight / "metrics.msgpack")
  b = logs.read_metrics(extended / "metrics.msgpack")
  assert [r["step"] for r in b] == [0, 10, 20, 30, 40, 50, 60] and a == b
  assert json.loads((extended / "config.json").read_text())["steps"] == 60


@pytest.mark.slow
def test_one_diverging_run_leaves_the_others_alone(tmp_path, tiny):
  cfg = tiny(**{"sweep.lr": (1e-3, 1e30), "sweep.train_fracs": (0.5,)})
  workdir = sweep.run_sweep(cfg, tmp_path / "mixed", progress=False)
  report.report(workdir)
  runs = json.loads((workdir / "runs.json").read_text())
  summary = json.loads((workdir / "summary.json").read_text())
  assert [s["diverged"] for s in summary] == [r["lr"] > 1 for r in runs] == [0, 0, 1, 1]
  healthy = sweep.run_sweep(
    tiny(**{"sweep.train_fracs": (0.5,)}), tmp_path / "healthy", progress=False
  )
  mixed = logs.read_metrics(workdir / "metrics.msgpack")
  alone = logs.read_metrics(healthy / "metrics.msgpack")
  assert [r["step"] for r in mixed] == [r["step"] for r in alone]
  for m, a in zip(mixed, alone):
    for name in ("train_loss", "val_acc", "param_norm"):
      np.testing.assert_allclose(m[name][:2], a[name], rtol=1e-4)
      assert np.isfinite(m[name][:2]).all()
  assert not np.isfinite(mixed[-1]["train_loss"][2:]).any()


@pytest.mark.slow
def test_load_run_round_trip(tmp_path, tiny):
  workdir = sweep.run_sweep(tiny(), tmp_path / "w", progress=False)
  records = logs.read_metrics(workdir / "metrics.msgpack")
  assert rundir.load(workdir).steps() == [20, 40]
  for step, record in ((None, records[-1]), (20, records[2])):
    for run in (0, 3):
      loaded = rundir.load_run(workdir, run=run, step=step)
      assert loaded.step == record["step"]
      assert loaded.accuracy("val") == pytest.approx(record["val_acc"][run], abs=1e-6)
      assert loaded.accuracy("train") == pytest.approx(record["train_acc"][run], abs=1e-6)
  with pytest.raises(UserError, match="no checkpoint at step 30"):
    rundir.load_run(workdir, run=0, step=30)
  with pytest.raises(UserError, match="runs are 0..3"):
    rundir.load_run(workdir, run=4)
