"""A sweep's run directory: checked before training writes to it, written, and read
back.

Run directory (one per sweep): config.json, runs.json, splits.npz (the table and
every run's train mask), metrics.msgpack, checkpoints/. Before a sweep writes to
one, ``check`` refuses a directory that holds something else, another sweep, or
files that disagree with each other (never silently reset, cut or regenerated).

Reports, figures, progress measures, notebooks and ``load_run`` read a sweep
through ``load`` (a sweep still training reads as far as its log goes); parameters
come back through ``grokjax.devices.restore``, the function a resume uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from grokjax import checkpoint, devices, lock, logs, plan
from grokjax import config as config_lib
from grokjax.analysis import as_arrays
from grokjax.checkpoint import checkpoint_steps
from grokjax.errors import UserError

log = logging.getLogger(__name__)


_PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096

# Config keys a --reconfigure may change in an existing workdir: they change how far
# and how often, never what a run is.
RECONFIGURABLE = {
  "name",
  "steps",
  "eval_every",
  "eval_schedule",
  "eval_points",
  "eval_batch",
  "threshold",
  "phase",
  "checkpoint_every",
  "checkpoint_keep",
  "log",
  "interp",
  "report",
  "reproduce",
}


def default_workdir(cfg) -> Path:
  return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_path(workdir: Path) -> None:
  """Refuses a --workdir whose name is too long to hold the sweep's files."""
  longest = max(len(part.encode()) for part in workdir.absolute().parts)
  if longest > 255:
    raise UserError(f"--workdir holds a name of {longest} bytes; the limit is 255")
  length = len(str(workdir.absolute()).encode())
  if length + len("/checkpoints/0.orbax-checkpoint-tmp/state/x") >= _PATH_MAX:
    raise UserError(
      f"--workdir is a path of {length} bytes; with the files in it, that passes the "
      f"limit of {_PATH_MAX}: choose a shorter --workdir"
    )


def check(workdir: Path, sweep: plan.Sweep, reconfigure: bool) -> None:
  """Refuses, before anything is written, a workdir that cannot hold this sweep: a
  file, one without write permission, one holding something else or another sweep,
  or a --reconfigure that would take a sweep back below the steps it has trained."""
  check_path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file; give a directory (new or of this sweep)")
  existing = next((p for p in [workdir, *workdir.parents] if p.exists()), Path("."))
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"cannot write in {existing}: permission denied; choose another --workdir")
  config_path = workdir / "config.json"
  if not config_path.exists():
    if workdir.exists() and any(p.name != lock.NAME for p in workdir.iterdir()):
      raise UserError(
        f"workdir {workdir} is not empty and holds no grokjax sweep; choose a new or empty "
        "--workdir"
      )
    return
  try:
    saved = config_lib.validate(config_lib.from_saved(json.loads(config_path.read_text())))
    old = json.loads(config_lib.to_json(saved))
  except (json.JSONDecodeError, UnicodeDecodeError, UserError, TypeError, ValueError) as e:
    raise UserError(
      f"{config_path} is damaged ({str(e).splitlines()[0]}); restore it or choose another --workdir"
    ) from None
  new = json.loads(config_lib.to_json(sweep.cfg))
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  if changed and not (reconfigure and set(changed) <= RECONFIGURABLE):
    hint = (
      "only " + ", ".join(sorted(RECONFIGURABLE)) + " may change"
      if reconfigure
      else "pass --reconfigure to continue it with new steps/eval settings"
    )
    raise UserError(
      f"workdir {workdir} holds a different sweep (changed: {', '.join(changed)}); "
      f"use another --workdir, or {hint}"
    )
  trained = max(checkpoint_steps(workdir), default=0)
  _check_contents(workdir, sweep, saved)
  if sweep.cfg.steps < trained:
    raise UserError(
      f"steps={sweep.cfg.steps} is below the {trained} steps this sweep has trained; "
      f"give --config.steps={trained} or more"
    )


def _save_steps(cfg) -> list[int]:
  """The steps at which the training loop saves a checkpoint under ``cfg``."""
  out, prev = [], 0
  for step in config_lib.eval_steps(cfg):
    if step and (step == cfg.steps or step // cfg.checkpoint_every > prev // cfg.checkpoint_every):
      out.append(step)
    prev = step
  return out


def _damaged(workdir: Path, what: str, fix: str) -> UserError:
  return UserError(f"run directory {workdir} is damaged: {what}; {fix}")


def _check_contents(workdir: Path, sweep: plan.Sweep, saved_cfg) -> None:
  """Refuses a run directory whose files disagree with each other, before anything
  is written: a training run would otherwise reset, cut or regenerate them. A file
  that only restates config.json (runs.json, splits.npz) and is missing is rebuilt,
  with a warning."""
  folder, log_path = workdir / "checkpoints", workdir / "metrics.msgpack"
  move = "move the run directory's files away (or use a new --workdir) to train again"
  if folder.exists() and not folder.is_dir():
    raise _damaged(workdir, "checkpoints is not a folder", f"restore checkpoints/, or {move}")
  if log_path.exists() and not log_path.is_file():
    raise _damaged(workdir, "metrics.msgpack is not a file", f"restore it, or {move}")
  try:
    records, _ = logs.scan(log_path.read_bytes()) if log_path.exists() else ([], [])
  except OSError as e:
    raise _damaged(workdir, f"metrics.msgpack does not read ({e.strerror})", move) from None
  logged = max((r["step"] for r, _, _ in records), default=None)
  steps = checkpoint_steps(workdir)
  saves = _save_steps(saved_cfg)
  if logged and not folder.exists():
    raise _damaged(
      workdir,
      f"checkpoints/ is missing, though metrics.msgpack logs {logged} steps",
      f"restore checkpoints/, or {move}",
    )
  if not steps and logged is not None and len(saves) > 1 and logged > saves[1]:
    raise _damaged(
      workdir,
      f"checkpoints/ holds no checkpoint, though metrics.msgpack logs {logged} steps (the "
      f"first was saved at step {saves[0]})",
      f"restore checkpoints/, or {move}",
    )
  check_log_end(workdir, logged)
  _check_runs_json(workdir, sweep)
  _check_splits(workdir, sweep)


def check_log_end(workdir: Path, logged: int | None) -> None:
  """Refuses a metric log (whose last intact record is at step ``logged``) that ends
  before the newest checkpoint: the record of a checkpoint's step is written before
  the checkpoint, so such a log was cut short (or deleted)."""
  steps = checkpoint_steps(workdir)
  if steps and (logged is None or logged < steps[-1]):
    if not (workdir / "metrics.msgpack").exists():
      what = f"metrics.msgpack is missing, though the sweep has trained (checkpoints at {steps})"
    else:
      what = (
        f"metrics.msgpack ends at step {logged}, but the checkpoints reach step {steps[-1]}: "
        "the log was cut short"
      )
    raise _damaged(workdir, what, "restore metrics.msgpack, or train again in a new --workdir")


def _check_runs_json(workdir: Path, sweep: plan.Sweep) -> None:
  path = workdir / "runs.json"
  if not path.exists():
    log.warning("%s is missing; it is written again from config.json", path)
    return
  try:
    runs = json.loads(path.read_text())
    ok = isinstance(runs, list) and len(runs) == len(sweep.runs)
    ok = ok and all(isinstance(r, dict) for r in runs)
  except (OSError, ValueError):
    ok = False
  if not ok:
    raise _damaged(
      workdir,
      f"runs.json does not read as the {len(sweep.runs)} runs of config.json",
      "restore runs.json, or delete it to have it written again from config.json",
    )
  new = json.loads(json.dumps(sweep.runs))
  for k, (old, run) in enumerate(zip(runs, new)):
    diff = sorted(f for f in old.keys() & run.keys() if old[f] != run[f])
    if diff:
      raise _damaged(
        workdir,
        f"runs.json's run {k} differs from config.json's (in {', '.join(diff)})",
        "restore runs.json, or delete it to have it written again from config.json",
      )


def _splits(sweep: plan.Sweep) -> dict[str, np.ndarray]:
  return dict(
    inputs=sweep.table.inputs,
    labels=sweep.table.labels,
    train_masks=sweep.train_masks,
    val_masks=sweep.val_masks,
  )


def _check_splits(workdir: Path, sweep: plan.Sweep) -> None:
  path = workdir / "splits.npz"
  if not path.exists():
    log.warning("%s is missing; it is written again from config.json", path)
    return
  try:
    with np.load(path, allow_pickle=False) as saved:
      differ = [
        name
        for name, want in _splits(sweep).items()
        if name not in saved or not np.array_equal(saved[name], want)
      ]
  except Exception as e:  # not a zip, a torn member, a bad header: all "does not read"
    raise _damaged(
      workdir,
      f"splits.npz does not read ({type(e).__name__})",
      "restore it, or delete it to have it written again from config.json",
    ) from None
  if differ:
    raise UserError(
      f"{path} holds other {', '.join(differ)} than config.json gives (the file was changed, "
      "or this version of grokjax builds the table differently): the checkpoints belong to "
      "those; restore it, or train again in a new --workdir"
    )


def write(workdir: Path, sweep: plan.Sweep) -> None:
  """config.json, runs.json and splits.npz (kept if there: the same splits)."""
  if not (workdir / "splits.npz").exists():
    tmp = workdir / "splits.npz.tmp"
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **_splits(sweep))
    os.replace(tmp, workdir / "splits.npz")
  logs.write_json_atomic(workdir / "runs.json", sweep.runs)
  logs.write_json_atomic(workdir / "config.json", config_lib.to_json(sweep.cfg))


class DamagedCheckpoint(UserError):
  """A checkpoint that does not restore (a missing or truncated file)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class RunDir(NamedTuple):
  """A sweep's run directory, read: its config, its runs and its metric log."""

  path: Path
  config: dict  # config.json
  runs: list[dict]  # runs.json, one entry per run, in metric order
  metrics: dict[str, np.ndarray]  # {"step": int [T], metric: float [T, K]}; {} before any eval

  @property
  def threshold(self) -> float:
    """The sweep's accuracy threshold (config.json's, else 0.99)."""
    return float(self.config.get("threshold", 0.99))

  def sweep(self) -> plan.Sweep:
    """The sweep rebuilt from config.json: table, splits, programs (a method or
    model of the user's must be registered first, as when it trained)."""
    return plan.build(config_lib.from_saved(self.config))

  def steps(self) -> list[int]:
    """Steps of the checkpoints kept."""
    if not (self.path / "checkpoints").is_dir():
      return []
    with checkpoint.manager(self.path, keep=None, create=False) as mngr:
      return list(mngr.all_steps())

  def params(self, step: int | None = None, sw: plan.Sweep | None = None) -> list:
    """Every run's parameters (numpy pytrees, runs.json order) at a saved ``step``
    (default: the latest); step 0 without a checkpoint: as training initialised them."""
    sw = sw or self.sweep()
    saved = self.steps()
    with contextlib.ExitStack() as stack:
      if saved:
        mngr = stack.enter_context(checkpoint.manager(self.path, keep=None, create=False))
      table, runs = devices.device_inputs(sw)
      if step == 0 and 0 not in saved:
        states = [init(table, r) for (init, _), r in zip(devices.sweep_fns(sw), runs)]
      else:
        if not saved or (step is not None and step not in saved):
          raise UserError(f"no checkpoint at step {step} in {self.path}; saved steps: {saved}")
        # In this machine's layout, whatever the padding of the one that saved them.
        try:
          states, _ = devices.restore(sw, mngr, table, runs, step)
        except UserError:
          raise
        except Exception as e:  # Orbax raises many kinds for missing or truncated files
          step = mngr.latest_step() if step is None else step
          reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
          raise DamagedCheckpoint(
            f"the checkpoint at step {step} in {self.path} does not restore ({reason})", step
          ) from None
    out = [None] * len(sw.runs)
    for prog, state in zip(sw.programs, states):
      host = jax.tree.map(np.asarray, state.params)
      for j, k in enumerate(prog.runs):
        out[k] = jax.tree.map(lambda x, j=j: x[j], host)
    return out


def load(path) -> RunDir:
  """Reads config.json, runs.json and metrics.msgpack of a sweep's run directory.

  A directory that is missing or holds no sweep is a UserError. A sweep still
  training reads as far as its log goes (a torn last record is skipped).
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise UserError(f"{path} is a file, not a run directory; pass the --workdir of a sweep")
  if not path.is_dir():
    raise UserError(f"run directory {path} does not exist; pass the --workdir of a sweep")
  for name in ("config.json", "runs.json", "metrics.msgpack"):
    if (path / name).exists() and not (path / name).is_file():
      raise UserError(f"run directory {path} is damaged: {name} is not a file; restore it")
  for name in ("config.json", "runs.json"):
    if not (path / name).is_file():
      raise UserError(
        f"{path} is not a grokjax run directory (no {name}); pass the --workdir of a sweep"
      )
  try:
    config = json.loads((path / "config.json").read_text())
    runs = json.loads((path / "runs.json").read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: unreadable config.json or runs.json ({e})") from None
  try:
    records = logs.read_metrics(path / "metrics.msgpack")
  except OSError as e:
    raise UserError(f"{path / 'metrics.msgpack'} does not read ({e.strerror or e})") from None
  check_log_end(path, max((r["step"] for r in records), default=None))
  metrics = as_arrays(records)
  for name, values in metrics.items():
    if name != "step" and values.shape[1] != len(runs):
      raise UserError(
        f"{path}: metrics.msgpack holds {values.shape[1]} runs per record "
        f"but runs.json lists {len(runs)}; the run directory is inconsistent"
      )
  return RunDir(path, config, runs, metrics)


class LoadedRun(NamedTuple):
  """One run's parameters at a saved step, with what it takes to evaluate them."""

  params: dict
  step: int
  model: object  # the Flax module: model.apply({"params": params}, inputs)
  table: object  # grokjax.data.Table: the sweep's full table (inputs, labels)
  train_mask: np.ndarray  # bool [N]: the run's training rows
  val_mask: np.ndarray  # bool [N]: its validation rows (all rows of its op not trained on)

  def accuracy(self, split: str = "val") -> float:
    """Accuracy of the loaded parameters on the run's ``"train"`` or ``"val"`` split."""
    rows = self.train_mask if split == "train" else self.val_mask
    logits = jax.jit(self.model.apply)({"params": self.params}, self.table.inputs[rows])
    return float((np.asarray(logits).argmax(-1) == self.table.labels[rows]).mean())


def load_run(path, run: int, step: int | None = None) -> LoadedRun:
  """Parameters of run ``run`` (its runs.json index) at a saved ``step`` (default:
  the latest), e.g. ``load_run("runs/quick", run=2).accuracy("val")``."""
  rd = load(path)
  sw = rd.sweep()
  if not 0 <= run < len(sw.runs):
    raise UserError(f"run {run} is not in this sweep; runs are 0..{len(sw.runs) - 1}")
  step = rd.steps()[-1] if step is None and rd.steps() else step
  params = rd.params(step, sw)[run]
  return LoadedRun(
    params, int(step or 0), sw.model(run), sw.table, sw.train_masks[run], sw.val_masks[run]
  )
