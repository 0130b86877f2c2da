"""A run directory read back: its config, runs and metrics, the sweep rebuilt from
config.json, and the parameters of any run at any saved step.

Reports, figures, progress measures, notebooks and ``load_run`` read a sweep
through this module (a sweep still training reads as far as its log goes);
parameters come back through ``grokjax.sweep.restore``, the function a resume uses.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from grokjax import checkpoint, logs, sweep
from grokjax import config as config_lib
from grokjax.analysis import as_arrays
from grokjax.errors import UserError


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

  def sweep(self) -> sweep.Sweep:
    """The sweep rebuilt from config.json: table, splits, programs (a method or
    model of the user's must be registered first, as when it trained)."""
    return sweep.build(config_lib.from_saved(self.config))

  def steps(self) -> list[int]:
    """Steps of the checkpoints kept."""
    if not (self.path / "checkpoints").is_dir():
      return []
    with checkpoint.manager(self.path, keep=None, create=False) as mngr:
      return list(mngr.all_steps())

  def params(self, step: int | None = None, sw: sweep.Sweep | None = None) -> list:
    """Every run's parameters (numpy pytrees, runs.json order) at a saved ``step``
    (default: the latest); step 0 without a checkpoint: as training initialised them."""
    sw = sw or self.sweep()
    saved = self.steps()
    with contextlib.ExitStack() as stack:
      if saved:
        mngr = stack.enter_context(checkpoint.manager(self.path, keep=None, create=False))
      table, runs = sweep.device_inputs(sw)
      if step == 0 and 0 not in saved:
        states = [init(table, r) for (init, _), r in zip(sweep.sweep_fns(sw), runs)]
      else:
        if not saved or (step is not None and step not in saved):
          raise UserError(f"no checkpoint at step {step} in {self.path}; saved steps: {saved}")
        # In this machine's layout, whatever the padding of the one that saved them.
        try:
          states, _ = sweep.restore(sw, mngr, table, runs, step)
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
  sweep.check_log_end(path, max((r["step"] for r in records), default=None))
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
    logits = self.model.apply({"params": self.params}, self.table.inputs[rows])
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
