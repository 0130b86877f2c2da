"""A sweep trained: the loop from a planned sweep (grokjax.plan) to metrics.msgpack
and Orbax checkpoints in its run directory (grokjax.rundir), and nothing else:
summaries and figures are grokjax.report's, after training.

``run_sweep`` checks everything before the first write, takes the run directory's
lock, resumes from the newest checkpoint that restores (grokjax.devices), and trains
every program chunk by chunk, logging each evaluation and saving checkpoints.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from grokjax import checkpoint, devices, integrations, lock, logs, plan, rundir
from grokjax import config as config_lib
from grokjax.errors import Interrupted, UserError, disk_full, moved


def run_sweep(
  cfg, workdir=None, *, reconfigure: bool = False, progress: bool = True, wait: bool = False
) -> Path:
  """Trains every run of the sweep ``cfg``, one compiled program per static
  signature; resumes from the newest checkpoint in ``workdir`` that restores.
  Writes the metric log and the checkpoints, nothing else (grokjax.report
  summarises and draws). Returns the run directory.

  Everything is checked before the first write: the config, the memory the sweep
  needs, its evaluation count, and a run directory that is damaged or holds another
  sweep. One process at a time trains a run directory (grokjax.lock; ``wait``: queue
  for it instead of refusing). Ctrl-C stops within seconds with the finished
  checkpoints kept: the same call resumes. A full disk is a UserError.
  """
  sweep = plan.build(cfg)
  cfg = sweep.cfg
  plan.check_budget(sweep)
  if jax.process_count() > 1 and not workdir:
    raise UserError("a sweep over several processes needs --workdir (one directory for all)")
  workdir = Path(workdir) if workdir else rundir.default_workdir(cfg)
  # Every process trains its share of the runs; process 0 alone writes files (the
  # checkpoints are Orbax's, written by all).
  primary = jax.process_index() == 0
  trackers = integrations.Writers()
  rundir.check_path(workdir)
  new = not workdir.exists()
  if primary:
    rundir.check(workdir, sweep, reconfigure)
    trackers = integrations.make_writer(cfg, sweep.runs, workdir)  # wandb/TensorBoard, if on
  try:
    with lock.hold(workdir, wait) if primary else contextlib.nullcontext():
      _train(sweep, workdir, primary, trackers, progress)
  except BaseException as e:
    if new and primary and workdir.is_dir() and not any(workdir.iterdir()):
      workdir.rmdir()  # failed before writing anything: leave no empty folder behind
    if isinstance(e, Exception) and disk_full(e):
      raise UserError(
        f"the disk is full ({getattr(e, 'filename', None) or workdir}); what was written is "
        "kept: free some space, then run the same command to resume"
      ) from None
    raise
  return workdir


SAVE_WAIT_S = 10.0  # Ctrl-C: how long a checkpoint being written may take to finish


def _record(step: int, metrics: list[dict], sweep: plan.Sweep) -> dict:
  """One metrics.msgpack record from each program's metrics, in runs.json order (a
  metric one program lacks, such as another model's module norm, is NaN there).
  Several processes: every one calls this (a gather; one process: a plain fetch)."""
  host = multihost_utils.process_allgather(metrics, tiled=True)
  names = list(dict.fromkeys(n for m in host for n in m))
  out = {name: np.full(len(sweep.runs), np.nan) for name in names}
  for prog, m in zip(sweep.programs, host):
    for name, values in m.items():
      out[name][prog.runs] = values[: len(prog.runs)]
  return {"step": int(step), **{name: [float(x) for x in v] for name, v in out.items()}}


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _train(sweep: plan.Sweep, workdir: Path, primary: bool, trackers, progress: bool) -> None:
  cfg = sweep.cfg
  _barrier("workdir")
  table, runs = devices.device_inputs(sweep)
  fns = devices.sweep_fns(sweep)
  mngr = checkpoint.manager(workdir, cfg.checkpoint_keep)
  closed, failed = False, True
  try:
    _train_from(sweep, workdir, primary, trackers, progress, table, runs, fns, mngr)
    failed = False
  except KeyboardInterrupt:
    # a save that does not finish in time is left to the next run (its tmp folder)
    closed = not checkpoint.wait_saves(mngr, SAVE_WAIT_S)
    steps = checkpoint.checkpoint_steps(workdir)
    where = f"step {steps[-1]}" if steps else "the start"
    raise Interrupted(
      f"interrupted; the sweep in {workdir} resumes from {where} with the same command"
    ) from None
  finally:
    trackers.close()
    if not closed:
      # after a failure, closing must not hide it (a failed save raises again here)
      with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
        mngr.close()


class _Log:
  """Where each evaluation goes: the metric log and trackers (process 0), the
  progress bar. ``push`` holds a chunk's metrics until the next chunk has been
  dispatched, so the device never waits on logging; ``flush`` writes them."""

  def __init__(self, sweep: plan.Sweep, workdir: Path, primary: bool, trackers, bar):
    self.sweep, self.primary, self.trackers, self.bar = sweep, primary, trackers, bar
    self.writer = logs.MetricWriter(workdir / "metrics.msgpack") if primary else None
    self.pending = None  # (step, each program's metrics, still on the device)

  def push(self, step: int, metrics: list[dict]) -> None:
    self.flush()
    self.pending = (step, metrics)

  def flush(self) -> None:
    if self.pending is None:
      return
    record = _record(*self.pending, self.sweep)  # every process: a gather
    self.pending = None
    if not self.primary:
      return
    self.writer.write(record)
    self.trackers.write(record)
    self.bar.update(record["step"] - self.bar.n)
    self.bar.set_postfix(
      train_acc=f"{np.nanmedian(record['train_acc']):.3f}",
      val_acc=f"{np.nanmedian(record['val_acc']):.3f}",
      refresh=False,
    )

  def close(self) -> None:
    self.bar.close()
    if self.writer:
      self.writer.close()


def _train_from(sweep, workdir, primary, trackers, progress, table, runs, fns, mngr) -> None:
  cfg = sweep.cfg
  padded = [int(r.seed.shape[0]) for r in runs]
  restored = devices.restore_newest(sweep, mngr, table, runs, workdir)
  start = 0
  if restored:
    state, meta = restored
    start = int(meta["step"])
  else:
    state = [init(table, r) for (init, _), r in zip(fns, runs)]
  if primary:
    rundir.write(workdir, sweep)
    logs.truncate_metrics(workdir / "metrics.msgpack", start if restored else -1)
  points = [s for s in config_lib.eval_steps(cfg) if s > start or (s == 0 and not restored)]
  if not points:
    if primary:
      print(f"sweep in {workdir} is finished ({start} steps); nothing to do")
    return
  bar = tqdm(
    total=cfg.steps,
    initial=start,
    unit="step",
    disable=not progress or not primary,
    desc=f"{', '.join(plan.ops(sweep.runs))} (p={cfg.p}), {len(sweep.runs)} runs",
  )
  out = _Log(sweep, workdir, primary, trackers, bar)
  prev = start
  try:
    for step in points:
      # Dispatch the next chunk of every program before fetching the last one's
      # metrics (``_Log.push``).
      chunks = [chunk(table, r, st, step - prev) for (_, chunk), r, st in zip(fns, runs, state)]
      state = [c[0] for c in chunks]
      out.push(step, [c[1] for c in chunks])
      if step == cfg.steps or step // cfg.checkpoint_every > prev // cfg.checkpoint_every:
        out.flush()  # a checkpoint's step is logged before the checkpoint
        checkpoint.save(mngr, step, state, {"step": step, "padded_runs": padded})
      prev = step
    out.flush()
    mngr.wait_until_finished()
  finally:
    out.close()


_MOVED = {
  **{n: f"grokjax.layout.{n}" for n in ("mesh", "vmap_group")},
  **{n: f"grokjax.plan.{n}" for n in ("Program", "Sweep", "signature", "build", "run_arrays")},
  **{
    n: f"grokjax.devices.{n}" for n in ("device_inputs", "abstract_states", "sweep_fns", "restore")
  },
  **{n: f"grokjax.rundir.{n}" for n in ("RECONFIGURABLE", "default_workdir", "check_log_end")},
  "checkpoint_steps": "grokjax.checkpoint.checkpoint_steps",
}
__getattr__ = moved("grokjax.sweep", _MOVED)
