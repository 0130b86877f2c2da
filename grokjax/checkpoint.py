"""Orbax checkpoints of a whole sweep, and loading one run back from a notebook.

A checkpoint holds the batched training state of every run (stacked parameters,
optimizer states, step) and, as JSON, the step the metric log had reached.
Batch order is a function of (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from grokjax import config as config_lib
from grokjax.analysis import load_run_dir
from grokjax.errors import UserError


def manager(workdir, keep: int = 3) -> ocp.CheckpointManager:
  """The sweep's CheckpointManager over ``workdir/checkpoints`` (async saves)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, states, meta: dict) -> None:
  """Starts saving ``states`` at ``step``; returns once the arrays are copied off."""
  mngr.save(
    step, args=ocp.args.Composite(state=ocp.args.StandardSave(states), meta=ocp.args.JsonSave(meta))
  )


def restore(mngr: ocp.CheckpointManager, abstract, step: int | None = None):
  """(states, meta) of ``step`` (default: the latest), shaped and sharded as the
  ``jax.ShapeDtypeStruct`` tree ``abstract``; None when there is no checkpoint."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  out = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
  )
  return out.state, out.meta


def saved_padding(mngr: ocp.CheckpointManager) -> int | None:
  """How many runs (with the padding to the device count) the latest checkpoint
  holds; None without a checkpoint or for one saved before this was recorded."""
  step = mngr.latest_step()
  if step is None:
    return None
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  return meta.get("padded_runs")


class LoadedRun(NamedTuple):
  """One run's parameters at a saved step, with what it takes to evaluate them."""

  params: dict
  step: int
  model: object  # the Flax module: model.apply({"params": params}, inputs)
  inputs: np.ndarray  # int32 [N, 4], the full table
  labels: np.ndarray  # int32 [N]
  train_mask: np.ndarray  # bool [N]: the run's training rows
  val_mask: np.ndarray  # bool [N]: its validation rows (all rows of its op not trained on)

  def accuracy(self, split: str = "val") -> float:
    """Accuracy of the loaded parameters on the run's ``"train"`` or ``"val"`` split."""
    rows = self.train_mask if split == "train" else self.val_mask
    logits = self.model.apply({"params": self.params}, self.inputs[rows])
    return float((np.asarray(logits).argmax(-1) == self.labels[rows]).mean())


def saved_steps(workdir) -> list[int]:
  """Steps of the checkpoints kept in ``workdir``."""
  with manager(workdir) as mngr:
    return list(mngr.all_steps())


def load_run(workdir, run: int, step: int | None = None) -> LoadedRun:
  """Parameters of run ``run`` (its runs.json index) at a saved ``step``
  (default: the latest), e.g. ``load_run("runs/quick", run=2).accuracy("val")``."""
  from grokjax import sweep as sweep_lib  # sweep imports this module

  workdir = Path(workdir)
  sweep = sweep_lib.build(config_lib.from_saved(load_run_dir(workdir).config))
  if not 0 <= run < len(sweep.runs):
    raise UserError(f"run {run} is not in this sweep; runs are 0..{len(sweep.runs) - 1}")
  with manager(workdir) as mngr:
    # Restore the runs as saved: padded to the device count of the machine that saved them.
    table, runs = sweep_lib.device_inputs(sweep, saved_padding(mngr))
    init, _ = sweep_lib.sweep_fns(sweep)
    abstract = sweep_lib.abstract_states(sweep, init, table, runs)
    steps = list(mngr.all_steps())
    if not steps or (step is not None and step not in steps):
      raise UserError(f"no checkpoint at step {step} in {workdir}; saved steps: {steps}")
    states, _ = restore(mngr, abstract, step)
  params = jax.tree.map(lambda x: np.asarray(x[run]), states.params)
  return LoadedRun(
    params,
    int(states.step[run]),
    sweep.model,
    sweep.table.inputs,
    sweep.table.labels,
    sweep.train_masks[run],
    sweep.val_masks[run],
  )
