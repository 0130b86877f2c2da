"""Orbax I/O of a sweep's checkpoints, and nothing else.

A checkpoint holds the batched training state of every program of a sweep (a list:
stacked parameters, optimizer states, step) and, as JSON, its metadata (the step
the metric log had reached, the padding of each program's run axis). Batch order is
a function of (seed, step), so no RNG state needs saving.
"""

from __future__ import annotations

import threading
from pathlib import Path

import orbax.checkpoint as ocp

# The layout of a checkpoint's state, recorded in its metadata: a version reads only
# its own (grokjax.devices refuses another in one line).
FORMATS = {
  1: "every program held the built-in methods orthograd, grokfast_ema and norm_target",
  2: "a program holds only the methods its runs use",
}
FORMAT = max(FORMATS)


def manager(workdir, keep: int | None = 3, create: bool = True) -> ocp.CheckpointManager:
  """The sweep's CheckpointManager over ``workdir/checkpoints`` (async saves);
  ``keep=None`` keeps every checkpoint; ``create=False`` for reading: the folder
  must exist, and nothing is written. For writing, a save that a kill cut short
  (a ``<step>.orbax-checkpoint-tmp`` folder, never a checkpoint) is removed at once,
  rather than with a warning when the same step is saved again."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=create, cleanup_tmp_directories=create
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, states, meta: dict) -> None:
  """Starts saving ``states`` at ``step`` with ``meta`` and the ``FORMAT``; returns once
  the arrays are copied off."""
  meta = ocp.args.JsonSave({**meta, "format": FORMAT})
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(states), meta=meta))


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


def saved_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict:
  """The metadata saved with ``step`` (default: the latest); {} without a checkpoint."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return {}
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def checkpoint_steps(workdir: Path) -> list[int]:
  """Steps of the finished checkpoints in RUN_DIR/checkpoints (folders named by their
  step; a save cut short is a ``<step>.orbax-checkpoint-tmp`` folder, not counted)."""
  folder = Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def wait_saves(mngr, timeout: float) -> bool:
  """Waits at most ``timeout`` s (a second Ctrl-C: not at all) for the checkpoint
  being written; whether it finished. (Orbax's own wait has no time limit, and a
  save interrupted at the wrong moment waits minutes for a signal that never comes.)"""
  failed = []

  def wait():
    try:
      mngr.wait_until_finished()
    except Exception as e:  # the save failed: it is not finished
      failed.append(e)

  thread = threading.Thread(target=wait, daemon=True)
  thread.start()
  try:
    thread.join(timeout)
  except KeyboardInterrupt:
    return False
  return not thread.is_alive() and not failed
