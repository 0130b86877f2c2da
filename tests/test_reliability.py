"""What a careful user meets: two processes on one run directory, every run
diverging, a bad byte in the log, a damaged checkpoint, a full disk, Ctrl-C, and
bad input that must leave the run directory byte for byte as it was."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import killable_env

from grokjax import logs, sweep
from grokjax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "tiny_config.py")
ENV = killable_env(JAX_PLATFORMS="cpu")  # scripts interrupted and killed


def cli(*args, script="sweep", **kw):
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / f"{script}.py"), *map(str, args)],
    capture_output=True,
    text=True,
    env=ENV,
    timeout=600,
    **kw,
  )


def start(*args):
  return subprocess.Popen(
    [sys.executable, str(ROOT / "experiments" / "sweep.py"), *map(str, args)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=ENV,
  )


def snapshot(d: Path) -> dict:
  return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_line_error(out, *words):
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  for word in words:
    assert word in lines[0], lines[0]


def wait_for(predicate, timeout=300):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return
    time.sleep(0.2)
  raise AssertionError("timed out")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny sweep, checkpoints at 20, 30, 40."""
  workdir = tmp_path_factory.mktemp("rel") / "run"
  out = cli("--config", TINY, "--workdir", workdir, "--config.checkpoint_every=10")
  assert out.returncode == 0, out.stderr
  return workdir


# --- two processes, one run directory --------------------------------------------------------


@pytest.mark.slow
def test_a_second_process_is_refused_and_the_log_stays_clean(tmp_path):
  workdir = tmp_path / "run"
  flags = ("--config", TINY, "--workdir", workdir, "--config.steps=2000", "--config.eval_every=50")
  first = start(*flags)
  try:
    wait_for(lambda: len(logs.read_metrics(workdir / "metrics.msgpack")) >= 2)
    before = (workdir / "config.json").read_bytes()
    second = cli(*flags)
    one_line_error(second, "in use by process", str(first.pid), "--wait")
    assert (workdir / "config.json").read_bytes() == before
    waiting = start(*flags, "--wait")  # queues behind the first, then finds it finished
    assert first.wait(timeout=600) == 0
    assert waiting.wait(timeout=600) == 0
    assert "finished" in waiting.stdout.read()
  finally:
    first.kill()
  steps = [r["step"] for r in logs.read_metrics(workdir / "metrics.msgpack")]
  assert steps == sorted(set(steps)) and steps[-1] == 2000  # no point logged twice
  assert not (workdir / ".lock").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, tiny):
  workdir = tmp_path / "run"
  workdir.mkdir()
  dead = dict(pid=999999, host="gone", since=0, command="sweep.py")
  (workdir / ".lock").write_text(json.dumps(dead))  # a kill -9 leaves the file, not the lock
  sweep.run_sweep(tiny(steps=10), workdir, progress=False)
  assert [r["step"] for r in logs.read_metrics(workdir / "metrics.msgpack")] == [0, 10]


# --- every run diverging ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_whose_every_run_diverges_finishes_with_its_table_and_figures(tmp_path):
  out = cli("--config", TINY, "--workdir", tmp_path / "run", "--config.optim.lr=1e6")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count("diverged") >= 4 and "Traceback" not in out.stderr
  for name in ("curves", "steps_to_threshold", "weight_norm"):
    assert (tmp_path / "run" / "figures" / f"{name}.png").stat().st_size > 5000
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert all(s["diverged"] for s in summary)
  assert cli(tmp_path / "run", script="plot").returncode == 0


def test_an_infinite_learning_rate_is_refused(tmp_path):
  one_line_error(
    cli("--config", TINY, "--workdir", tmp_path / "w", "--config.optim.lr=inf"),
    "optim.lr=inf",
    "finite",
  )
  assert not (tmp_path / "w").exists()


# --- damaged files ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_bad_byte_in_the_middle_of_the_log_costs_one_record(finished, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(finished, run)
  raw = (run / "metrics.msgpack").read_bytes()
  records, _ = logs.scan(raw)
  (_, a, _), (_, _, b) = records[1], records[4]  # records of steps 10 and 40
  # A crash after the step-30 checkpoint: the step-40 record torn, its checkpoint gone;
  # and a bad byte in the step-10 record, from long before the checkpoint.
  shutil.rmtree(run / "checkpoints" / "40")
  damaged = raw[:a] + b"\xc1" + raw[a + 1 : b - 5]
  (run / "metrics.msgpack").write_bytes(damaged)
  out = cli("--config", TINY, "--workdir", run, "--config.checkpoint_every=10")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "damaged" in out.stderr  # said, in one line
  got = logs.read_metrics(run / "metrics.msgpack")
  want = logs.read_metrics(finished / "metrics.msgpack")
  assert got == want[:1] + want[2:]  # only the damaged record is gone
  assert (run / "metrics.msgpack").read_bytes()[:a] == raw[:a]


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(finished, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(finished, run)
  for f in (run / "checkpoints" / "40").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # every file of it truncated
  out = cli("--config", TINY, "--workdir", run, "--config.checkpoint_every=10")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "does not restore" in out.stderr and "resuming from step 30" in out.stderr
  assert "Traceback" not in out.stderr
  a = logs.read_metrics(run / "metrics.msgpack")
  assert a == logs.read_metrics(finished / "metrics.msgpack")  # the same numbers
  assert (run / "damaged" / "40").is_dir()


# --- errors leave the run directory as it was ------------------------------------------------


@pytest.mark.slow
def test_a_finished_sweep_without_its_log_exits_2_and_changes_nothing(finished, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(finished, run)
  (run / "metrics.msgpack").unlink()
  before = snapshot(run)
  out = cli("--config", TINY, "--workdir", run, "--config.checkpoint_every=10")
  one_line_error(out, "metrics.msgpack is missing")
  assert snapshot(run) == before


@pytest.mark.parametrize(
  "breakage, words",
  [
    (lambda run: (run / "config.json").write_text("{not json"), ["config.json is damaged"]),
    (lambda run: None, ["--reconfigure"]),  # another sweep's settings (steps=60 below)
  ],
)
@pytest.mark.slow
def test_bad_run_directories_are_refused_unchanged(finished, tmp_path, breakage, words):
  run = tmp_path / "run"
  shutil.copytree(finished, run)
  breakage(run)
  before = snapshot(run)
  one_line_error(cli("--config", TINY, "--workdir", run, "--config.steps=60"), *words)
  assert snapshot(run) == before


@pytest.mark.slow
def test_reconfigure_below_the_trained_steps_is_refused(finished, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(finished, run)
  before = snapshot(run)
  out = cli(
    "--config",
    TINY,
    "--workdir",
    run,
    "--config.steps=30",
    "--reconfigure",
    "--config.checkpoint_every=10",
  )
  one_line_error(out, "below the 40 steps", "--config.steps=40")
  assert snapshot(run) == before


def test_workdir_that_is_a_file_or_too_long(tmp_path):
  (tmp_path / "f").write_text("x")
  one_line_error(cli("--config", TINY, "--workdir", tmp_path / "f"), "is a file")
  assert (tmp_path / "f").read_text() == "x"
  one_line_error(cli("--config", TINY, "--workdir", tmp_path / ("x" * 300)), "limit is 255")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_workdir_without_write_permission(tmp_path):
  (tmp_path / "ro").mkdir(mode=0o555)
  one_line_error(cli("--config", TINY, "--workdir", tmp_path / "ro" / "run"), "permission")


def test_bad_sweep_lists(tmp_path):
  one_line_error(
    cli("--config", TINY, "--workdir", tmp_path / "w", "--config.sweep.seeds=1,1"),
    "sweep.seeds lists 1 more than once",
  )
  one_line_error(
    cli("--config", TINY, "--workdir", tmp_path / "w", "--config.p=10007", "--config.op=add"),
    "p=10007",
    "GiB",
  )
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "body, words",
  [
    ('raise RuntimeError("boom")', ["get_config() raised RuntimeError: boom", "bad.py"]),
    ("return undefined_name", ["get_config() raised NameError", "bad.py"]),
  ],
)
def test_a_config_file_that_raises_is_named_in_one_line(tmp_path, body, words):
  (tmp_path / "bad.py").write_text(f"def get_config():\n  {body}\n")
  one_line_error(cli("--config", tmp_path / "bad.py", "--workdir", tmp_path / "w"), *words)
  one_line_error(
    cli("--config", TINY, "--config.stpes=10", "--workdir", tmp_path / "w"),
    "unknown config key 'stpes'",
    "steps",
  )
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_export_somewhere_unwritable(finished):
  before = snapshot(finished)
  out = cli(finished, "--format", "csv", "--out", "/proc/grokjax-metrics.csv", script="export")
  one_line_error(out, "cannot write /proc/grokjax-metrics.csv")
  assert snapshot(finished) == before


def test_plot_before_the_first_evaluation_makes_no_folder(tmp_path):
  from grokjax import config

  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(config.to_json(config.default_config()))
  (run / "runs.json").write_text("[]")
  out = cli(run, script="plot")
  one_line_error(out, "no metric records yet")
  assert sorted(p.name for p in run.iterdir()) == ["config.json", "runs.json"]


# --- a full disk, Ctrl-C ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_is_one_message_and_the_same_command_resumes(tmp_path, tiny, monkeypatch):
  ref = sweep.run_sweep(tiny(), tmp_path / "ref", progress=False)
  calls = []
  write = logs.MetricWriter.write

  def full(self, record):
    calls.append(record["step"])
    if record["step"] == 30:
      raise OSError(28, "No space left on device", str(tmp_path / "run" / "metrics.msgpack"))
    write(self, record)

  monkeypatch.setattr(logs.MetricWriter, "write", full)
  with pytest.raises(UserError, match="the disk is full .*run the same command to resume"):
    sweep.run_sweep(tiny(), tmp_path / "run", progress=False)
  monkeypatch.setattr(logs.MetricWriter, "write", write)
  sweep.run_sweep(tiny(), tmp_path / "run", progress=False)
  assert logs.read_metrics(tmp_path / "run" / "metrics.msgpack") == logs.read_metrics(
    ref / "metrics.msgpack"
  )
  assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_the_same_command_resumes(tmp_path):
  workdir = tmp_path / "run"
  flags = (
    "--config",
    TINY,
    "--workdir",
    workdir,
    "--config.steps=1500",
    "--config.eval_every=50",
    "--config.checkpoint_every=500",
  )
  proc = start(*flags)
  wait_for(lambda: (workdir / "checkpoints" / "500").is_dir())
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-2000:]
  lines = [line for line in err.strip().splitlines() if "%|" not in line]  # no progress bar
  assert len(lines) == 1 and "interrupted" in lines[0] and "same command" in lines[0], err
  assert not (workdir / ".lock").exists()
  out = cli(*flags)
  assert out.returncode == 0, out.stderr[-2000:]
  steps = [r["step"] for r in logs.read_metrics(workdir / "metrics.msgpack")]
  assert steps == list(range(0, 1501, 50))
  assert np.isfinite(logs.read_metrics(workdir / "metrics.msgpack")[-1]["train_loss"]).all()
