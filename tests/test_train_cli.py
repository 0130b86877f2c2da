"""experiments/train.py: one run with flat flags, the seeds' README examples, aliases, errors.

Every test runs the script in a subprocess (absl flags are process-global), in a fresh
working directory. The two trainings are the seeds' README examples shrunk in steps only.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "train.py"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "param_norm")
FIGURES = ("curves.png", "steps_to_threshold.png", "weight_norm.png")


def start(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(
    [sys.executable, str(SCRIPT), *args],
    cwd=cwd,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def train(args, cwd):
  """Runs train.py; returns (returncode, stdout, stderr)."""
  return finish(start(args, cwd))


def finish(proc):
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def dry_runs(argvs, cwd):
  """The --dry_run previews of several command lines, run side by side."""
  procs = [start([*a, "--dry_run"], cwd) for a in argvs]
  previews = []
  for argv, proc in zip(argvs, procs):
    rc, out, err = finish(proc)
    assert rc == 0, (argv, err)
    previews.append(json.loads(out))
  return previews


def checkpoint_steps(run_dir):
  return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def check_run_dir(run_dir, n_rows, n_train, steps):
  """The documented outputs of a one-run directory exist and parse."""
  runs = json.loads((run_dir / "runs.json").read_text())
  assert len(runs) == 1
  with np.load(run_dir / "splits.npz") as z:
    inputs, labels, train = z["inputs"], z["labels"], z["train_masks"]
    val = z["val_masks"] if "val_masks" in z else ~train
  assert inputs.shape == (n_rows, 4) and labels.shape == (n_rows,) and train.shape == (1, n_rows)
  assert train.sum() == n_train and val.sum() == n_rows - n_train and not (train & val).any()
  with open(run_dir / "metrics.msgpack", "rb") as f:
    records = list(msgpack.Unpacker(f))  # readable as plain msgpack, each with its checksum
  assert all(isinstance(r.pop("crc32"), int) for r in records)
  assert [r["step"] for r in records] == steps
  for r in records:
    assert all(len(r[m]) == 1 for m in METRICS)
    assert any(k.startswith("param_norm/") for k in r)  # per-module weight norms
  summary = json.loads((run_dir / "summary.json").read_text())
  assert len(summary) == 1
  for name in FIGURES:
    assert (run_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert checkpoint_steps(run_dir) == [steps[-1]]
  return runs[0], records


@pytest.mark.slow
def test_tf_seed_example(tmp_path):
  # python -m scripts.train runs-dir --dataset cubic_polynomial --train-frac 0.5 --p 97
  #   --model transformer --learning-rate 0.001 --epochs 200 --steps-per-execution 100
  args = "runs-dir --dataset cubic_polynomial --train-frac 0.5 --p 97 --model transformer "
  args += "--learning-rate 0.001 --epochs 1 --steps-per-execution 5 --history-jsonl"
  rc, out, err = train(args.split(), tmp_path)
  assert rc == 0, err
  (run_dir,) = (tmp_path / "runs-dir").iterdir()
  assert re.fullmatch(r"\d{8}-\d{6}", run_dir.name)  # RUNS_DIR/<timestamp>, as the seed
  # cubic mod 97: 97 * 97 rows, half for training; batch min(512, 4704 // 2) = 512
  per_epoch = 4704 // 512
  run, records = check_run_dir(run_dir, 97 * 97, 4704, [0, 5, per_epoch])
  cfg = json.loads((run_dir / "config.json").read_text())
  assert (cfg["op"], cfg["p"], cfg["model"]["name"], cfg["optim"]["lr"]) == (
    "cubic",
    97,
    "transformer",
    0.001,
  )
  assert cfg["sweep"]["train_fracs"] == [0.5] and cfg["sweep"]["seeds"] == [0]
  assert (cfg["steps"], cfg["eval_every"], cfg["checkpoint_every"]) == (per_epoch, 5, 90)
  assert cfg["checkpoint_keep"] == 1  # every checkpoint is kept, as the seed did
  assert (run["op"], run["p"], run["train_frac"], run["lr"], run["seed"]) == (
    "cubic",
    97,
    0.5,
    0.001,
    0,
  )
  # history.jsonl: the seed's JSON-lines history, one object per evaluation point
  lines = (run_dir / "history.jsonl").read_text().splitlines()
  assert f"history: {run_dir.relative_to(tmp_path) / 'history.jsonl'}" in out
  assert len(lines) == len(records)
  for line, record in zip(lines, records):
    row = json.loads(line)
    assert row["step"] == record["step"] and row["seed"] == 0
    for key, values in record.items():
      if key != "step":
        assert row[key] == values[0]
  assert any(k.startswith("param_norm/Block_") for k in row)


@pytest.mark.slow
def test_taugrok_example(tmp_path):
  # python grok.py --lr=1e-4 --save-models --save-metrics --optim_steps=100000 --operation=add
  # TAUgrok's default seed is 42, grokjax's 0: the translation says --seed=42.
  args = "--lr=1e-4 --save-models --save-metrics --optim_steps=20 --operation=add --seed=42"
  args = args.split()
  (preview,) = dry_runs([args], tmp_path)
  assert not any(tmp_path.iterdir())  # a dry run writes nothing
  rc, out, err = train(args, tmp_path)
  assert rc == 0, err
  run_dir = tmp_path / "runs" / "add_lr_0.0001_seed_42_optim_steps_20"  # TAUgrok's naming
  assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
  assert preview["run_dir"] == str(run_dir.relative_to(tmp_path))
  cfg = json.loads((run_dir / "config.json").read_text())
  assert cfg == preview["config"]  # the dry run shows the config.json a run writes
  assert (cfg["op"], cfg["p"], cfg["optim"]["lr"], cfg["steps"]) == ("add", 97, 1e-4, 20)
  run, records = check_run_dir(run_dir, 97 * 97, 4704, list(range(21)))  # 20 evaluations
  assert (run["op"], run["lr"], run["seed"], run["train_frac"]) == ("add", 1e-4, 42, 0.5)
  assert not (run_dir / "history.jsonl").exists()
  # The same command again finds the run finished; --history-jsonl can be added later.
  rc, out, err = train([*args, "--history-jsonl"], tmp_path)
  assert rc == 0, err
  assert "finished" in out
  assert len((run_dir / "history.jsonl").read_text().splitlines()) == len(records)


@pytest.mark.slow
def test_aliases_resolve_to_the_same_config(tmp_path):
  same = " --weight-decay=0.5 --batch-size=64 --seed=42 --train-frac=0.3"
  commands = [
    "--op=add --lr=1e-4 --steps=20 --eval_every=5 --weight_decay=0.5 --batch_size=64 --seed=42"
    " --train_frac=0.3",
    "--operation=add --lr=1e-4 --optim_steps=20 --eval-every=5" + same,
    "--dataset addition --learning-rate 0.0001 --optim-steps 20 --steps-per-execution 5"
    " --save-models --save-metrics" + same,
    # every spelling at once is fine while they agree
    "--op=add --operation=add --dataset=addition --lr=1e-4 --learning_rate=0.0001 --steps=20"
    " --optim_steps=20 --eval_every=5 --steps_per_execution=5" + same,
  ]
  previews = dry_runs([c.split() for c in commands], tmp_path)
  for p in previews[1:]:
    assert p == previews[0]
  cfg = previews[0]["config"]
  assert (cfg["op"], cfg["optim"]["lr"], cfg["steps"], cfg["eval_every"]) == ("add", 1e-4, 20, 5)
  assert (cfg["optim"]["weight_decay"], cfg["batch_size"]) == (0.5, 64)
  assert (cfg["sweep"]["seeds"], cfg["sweep"]["train_fracs"]) == ([42], [0.3])
  assert previews[0]["run_dir"] == os.path.join(
    "runs", "add_lr_0.0001_seed_42_optim_steps_20_train_frac_0.3_weight_decay_0.5_batch_size_64"
  )
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_epochs_and_run_directories(tmp_path):
  # div mod 97: 97 * 96 rows, 4656 for training
  tf_example = "runs-dir --dataset cubic_polynomial --train-frac 0.5 --p 97 --model transformer "
  tf_example += "--learning-rate 0.001 --epochs 200 --steps-per-execution 100"
  tf, epochs, agree, small_batch, named, runs_dir = dry_runs(
    [
      tf_example.split(),  # not shrunk: what the docs say it becomes
      ["--epochs=3"],
      ["--epochs=2", "--steps=18"],
      ["--epochs=2", "--batch_size=100", "--checkpoint_every=7", "--eval_every=4"],
      ["--workdir=my-run-dir", "--train-frac=0.7"],  # values keep their dashes
      ["runs-dir", "--dry-run"],
    ],
    tmp_path,
  )
  cfg = tf["config"]
  assert (tf["steps_per_epoch"], cfg["steps"], cfg["eval_every"]) == (9, 1800, 100)
  assert (cfg["checkpoint_every"], cfg["checkpoint_keep"]) == (90, 21)
  assert epochs["steps_per_epoch"] == 4656 // 512
  cfg = epochs["config"]
  assert (cfg["steps"], cfg["eval_every"], cfg["checkpoint_every"]) == (27, 9, 90)
  assert cfg["checkpoint_keep"] == 1
  assert agree["config"]["steps"] == 18
  assert named["config"]["checkpoint_keep"] == 3  # without --epochs: grokjax's defaults
  cfg = small_batch["config"]
  assert small_batch["steps_per_epoch"] == 46
  assert (cfg["steps"], cfg["eval_every"], cfg["checkpoint_every"]) == (92, 4, 7)
  assert cfg["checkpoint_keep"] == 92 // 7 + 1
  assert named["run_dir"] == "my-run-dir" and named["config"]["sweep"]["train_fracs"] == [0.7]
  assert re.fullmatch(r"runs-dir/\d{8}-\d{6}", runs_dir["run_dir"])
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_bad_flags_one_line_exit_2(tmp_path):
  cases = [
    (["--train-frac", "1.5"], "--train_frac=1.5: must be in (0, 1)"),
    (["--op", "nope"], "unknown op 'nope'"),
    (["--operation=add", "--op=sub"], "--op=sub and --operation=add disagree"),
    (["--epochs=2", "--steps=5"], "disagree"),
    (["--model", "lstm"], "choose one of: transformer, mlp"),
    (["--p", "96"], "must be prime"),
    (["--steps", "abc"], "--steps=abc"),
    (["runs-dir", "--workdir", "w"], "not both"),
    (["a", "b"], "unexpected arguments"),
    (["--no-such-flag"], "no_such_flag"),
  ]
  procs = [start(args, tmp_path) for args, _ in cases]
  for (args, message), proc in zip(cases, procs):
    rc, _, err = finish(proc)
    lines = err.strip().splitlines()
    assert rc == 2, (args, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
  assert not any(tmp_path.iterdir())  # nothing written


def test_help_explains_every_flag_with_its_default(tmp_path):
  rc, out, err = train(["--help"], tmp_path)
  assert rc == 0, err  # grokjax.cli turns absl's --help status 1 into 0
  blocks = re.split(r"\n  --(?:\[no\])?(\w+): ", out.split(str(SCRIPT) + ":", 1)[1])
  helps = dict(zip(blocks[1::2], blocks[2::2]))
  for name in (
    "op operation dataset p train_frac model lr learning_rate weight_decay seed steps "
    "optim_steps epochs batch_size eval_every steps_per_execution checkpoint_every "
    "checkpoint_keep workdir wandb history_jsonl save_models save_metrics reconfigure dry_run"
  ).split():
    assert name in helps, name
    assert "default" in helps[name].lower(), (name, helps[name])
  assert "(default: '0.001')" in helps["lr"] and "(default: 'div')" in helps["op"]
  assert "No-op" in helps["save_models"]
