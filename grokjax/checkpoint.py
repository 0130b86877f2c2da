"""Orbax checkpoints of a whole sweep, and loading one run back from a notebook.

A checkpoint holds the batched training state of every run (stacked parameters,
optimizer states, step) and, as JSON, the step the metric log had reached.
Batch order is a function of (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def manager(workdir, keep: int = 3) -> ocp.CheckpointManager:
  """The sweep's CheckpointManager over ``workdir/checkpoints`` (async saves)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, states, meta: dict) -> None:
  """Starts saving ``states`` at ``step``; returns once the arrays are copied off."""
  mngr.save(
    step, args=ocp.args.Composite(state=ocp.args.StandardSave(states), meta=ocp.args.JsonSave(meta))
  )


def restore(mngr: ocp.CheckpointManager, like, step: int | None = None):
  """(states, meta) of ``step`` (default: the latest), shaped and sharded like
  ``like``; None when there is no checkpoint."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  out = mngr.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
  )
  return out.state, out.meta
