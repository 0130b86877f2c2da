"""A sweep: config -> run grid -> one batched, sharded training loop -> run directory.

Run directory (one per sweep): config.json, runs.json, splits.npz (the table and
every run's train mask), metrics.msgpack, checkpoints/, summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from grokjax import analysis, checkpoint, data, integrations, logs, plots, train
from grokjax import config as config_lib
from grokjax.errors import UserError
from grokjax.model import make_model

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
  "checkpoint_every",
  "checkpoint_keep",
  "log",
  "interp",
}


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Everything host-side a sweep trains from.

  ``table`` holds the rows of every operation of the sweep (one after another, in
  a shared vocabulary); run k trains on ``train_masks[k]`` and is validated on
  ``val_masks[k]``, both over the whole table.
  """

  cfg: object
  runs: list[dict]
  table: data.Table
  train_masks: np.ndarray  # bool [K, N]
  val_masks: np.ndarray  # bool [K, N]
  batch_sizes: np.ndarray  # int [K]
  model: object  # the Flax module every run trains

  @property
  def batch(self) -> int:
    """The static batch size: the largest run's."""
    return int(self.batch_sizes.max())

  def steps_per_epoch(self, k: int = 0) -> int:
    """Updates per pass over run k's training set: N_train // its batch size."""
    return int(self.train_masks[k].sum() // self.batch_sizes[k])

  def swept(self) -> list[str]:
    """Run fields that take more than one value (split seeds only when swept)."""
    axes = config_lib.SWEEP_AXES.values()
    fields = [f for f, _ in axes if len({r.get(f) for r in self.runs}) > 1]
    return [f for f in fields if f != "split_seed" or self.cfg.sweep.split_seeds]


def _ops(runs: list[dict]) -> list[str]:
  """The operations of a sweep's runs, in order of first appearance."""
  return list(dict.fromkeys(r["op"] for r in runs))


def build(cfg) -> Sweep:
  """Validates cfg and builds the table, the runs and their splits."""
  cfg = config_lib.validate(cfg)
  runs = config_lib.run_grid(cfg)
  ops = _ops(runs)
  table, op_rows = data.stack_tables(ops, cfg.p)
  train_masks = np.zeros((len(runs), len(table.labels)), bool)
  val_masks = np.zeros_like(train_masks)
  for k, r in enumerate(runs):
    rows = op_rows[ops.index(r["op"])]
    train = data.split_mask(rows.stop - rows.start, r["train_frac"], r["split_seed"])
    train_masks[k, rows], val_masks[k, rows] = train, ~train
  n_train = train_masks.sum(1)
  batch_sizes = np.maximum(np.minimum(cfg.batch_size, (n_train * cfg.batch_frac).astype(int)), 1)
  model = make_model(cfg.model, table.vocab_size, table.n)
  return Sweep(cfg, runs, table, train_masks, val_masks, batch_sizes, model)


def run_arrays(sweep: Sweep, multiple: int = 1) -> train.Run:
  """The runs as stacked arrays, padded with copies of the last run to a multiple
  of ``multiple`` (the device count). Each run gets the rows of its operation,
  padded to the largest operation's count."""
  k = len(sweep.runs)
  idx = np.minimum(np.arange(-(-k // multiple) * multiple), k - 1)
  own = sweep.train_masks[idx] | sweep.val_masks[idx]  # [K', N]
  m = int(own.sum(1).max())
  # Stable sort puts each run's own rows first, in table order.
  rows = np.argsort(~own, axis=1, kind="stable")[:, :m].astype(np.int32)
  valid = np.take_along_axis(own, rows, 1)
  runs = [sweep.runs[i] for i in idx]
  hparams = {h: np.asarray([_hparam(r, h) for r in runs], np.float32) for h in train.HPARAMS}
  return train.Run(
    seed=np.asarray([r["seed"] for r in runs], np.int32),
    rows=rows,
    valid=valid,
    train_mask=np.take_along_axis(sweep.train_masks[idx], rows, 1),
    batch_size=sweep.batch_sizes[idx].astype(np.int32),
    hparams=hparams,
  )


def _hparam(run: dict, name: str) -> float:
  """A run's value of one of train.HPARAMS, from its runs.json entry."""
  return float(run["loss"] == "stablemax") if name == "stablemax" else float(run[name])


def device_inputs(sweep: Sweep, multiple: int | None = None) -> tuple[train.Table, train.Run]:
  """The table (replicated) and the runs (split over every device on the run axis,
  padded to a multiple of ``multiple``, by default the device count)."""
  mesh = jax.make_mesh((jax.device_count(),), ("runs",), axis_types=(AxisType.Auto,))
  runs = run_arrays(sweep, multiple or jax.device_count())
  runs = jax.device_put(runs, NamedSharding(mesh, P("runs")))
  table = train.Table(sweep.table.inputs, sweep.table.labels)
  return jax.device_put(table, NamedSharding(mesh, P())), runs


def abstract_states(sweep: Sweep, init, table, runs):
  """Shapes, dtypes and shardings of the batched state, without computing it."""
  sharding = runs.seed.sharding  # every state leaf has the run axis first
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    jax.eval_shape(init, table, runs),
  )


def sweep_fns(sweep: Sweep):
  """The jitted, vmapped (init, chunk) of ``train.make_sweep_fns`` for this sweep."""
  cfg = sweep.cfg
  static = train.Static(
    sweep.model,
    cfg.optim,
    sweep.batch,
    cfg.eval_batch,
    ma_window=cfg.method.grokfast_window if any(r["grokfast_ma_lamb"] for r in sweep.runs) else 0,
    keep_init=any(r["decay_to_init"] for r in sweep.runs),
    eval_float64=cfg.eval_float64,
  )
  precision = None if cfg.matmul_precision == "default" else cfg.matmul_precision
  return train.make_sweep_fns(static, precision, vmap_group(cfg, sweep.batch))


def vmap_group(cfg, batch: int) -> int | None:
  """Runs vmapped together (None: all). An accelerator takes every run at once.
  On CPU, one run at batch >= 256 already keeps the cores busy and more runs only
  spill the caches, so runs go one at a time; smaller batches pair up (measured on
  2 cores: quick config K = 32 at 147 run-steps/s all vmapped, 180 in pairs, ~170
  one at a time; paper batch 512, K = 8: 41 vmapped, 47 one at a time)."""
  if cfg.vmap_group:
    return cfg.vmap_group
  return max(1, 256 // batch) if jax.default_backend() == "cpu" else None


def default_workdir(cfg) -> Path:
  return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _prepare_workdir(workdir: Path, sweep: Sweep, reconfigure: bool) -> None:
  """Writes config.json, runs.json and splits.npz, or checks an existing sweep's."""
  new = json.loads(config_lib.to_json(sweep.cfg))
  config_path = workdir / "config.json"
  if config_path.exists():
    old = json.loads(config_path.read_text())
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
  elif workdir.exists() and any(workdir.iterdir()):
    raise UserError(
      f"workdir {workdir} is not empty and holds no grokjax sweep; choose a new or empty --workdir"
    )
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "splits.npz").exists():
    np.savez_compressed(
      workdir / "splits.npz",
      inputs=sweep.table.inputs,
      labels=sweep.table.labels,
      train_masks=sweep.train_masks,
      val_masks=sweep.val_masks,
    )
  logs.write_json_atomic(workdir / "runs.json", sweep.runs)
  logs.write_json_atomic(config_path, config_lib.to_json(sweep.cfg))


def _record(step: int, metrics: dict, k: int) -> dict:
  """One metrics.msgpack record. Several processes: every one calls this (a gather;
  with one process it is a plain fetch)."""
  host = multihost_utils.process_allgather(metrics, tiled=True)
  return {"step": int(step), **{name: [float(x) for x in v[:k]] for name, v in host.items()}}


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def run_sweep(cfg, workdir=None, *, reconfigure: bool = False, progress: bool = True) -> Path:
  """Trains every run of the sweep ``cfg`` in one program; resumes from the last
  checkpoint in ``workdir``. Returns the run directory."""
  sweep = build(cfg)
  cfg = sweep.cfg
  if jax.process_count() > 1 and not workdir:
    raise UserError("a sweep over several processes needs --workdir (one directory for all)")
  workdir = Path(workdir) if workdir else default_workdir(cfg)
  # Every process trains its share of the runs; process 0 alone writes files (the
  # checkpoints are Orbax's, written by all).
  primary = jax.process_index() == 0
  trackers = integrations.Writers()
  if primary:
    trackers = integrations.make_writer(cfg, sweep.runs, workdir)  # wandb/TensorBoard, if on
    _prepare_workdir(workdir, sweep, reconfigure)
  _barrier("workdir")

  k = len(sweep.runs)
  table, runs = device_inputs(sweep)
  init, chunk = sweep_fns(sweep)

  mngr = checkpoint.manager(workdir, cfg.checkpoint_keep)
  padded = int(runs.seed.shape[0])
  saved = checkpoint.saved_padding(mngr)
  if saved not in (None, padded):
    raise UserError(
      f"the checkpoints in {workdir} hold {saved} runs with padding, this machine's "
      f"{jax.device_count()} devices pad to {padded}: resume on as many devices as it started on"
    )
  restored = checkpoint.restore(mngr, abstract_states(sweep, init, table, runs))
  start = 0
  if restored:
    states, meta = restored
    start = int(meta["step"])
  else:
    states = init(table, runs)
  if primary:
    logs.truncate_metrics(workdir / "metrics.msgpack", start if restored else -1)
  points = [s for s in config_lib.eval_steps(cfg) if s > start or (s == 0 and not restored)]
  if not points and primary:
    print(f"sweep in {workdir} is finished ({start} steps); nothing to do")
  bar = tqdm(
    total=cfg.steps,
    initial=start,
    unit="step",
    disable=not progress or not points or not primary,
    desc=f"{', '.join(_ops(sweep.runs))} (p={cfg.p}), {k} runs",
  )

  writer = logs.MetricWriter(workdir / "metrics.msgpack") if primary else None
  pending, prev = None, start

  def flush():
    record = _record(*pending, k)
    if not primary:
      return
    writer.write(record)
    trackers.write(record)
    bar.update(record["step"] - bar.n)
    bar.set_postfix(
      train_acc=f"{np.median(record['train_acc']):.3f}",
      val_acc=f"{np.median(record['val_acc']):.3f}",
      refresh=False,
    )

  for step in points:
    # Dispatch the next chunk before fetching the last one's metrics, so the
    # device never waits on logging.
    states, metrics = chunk(table, runs, states, step - prev)
    if pending:
      flush()
    pending = (step, metrics)
    if step == cfg.steps or step // cfg.checkpoint_every > prev // cfg.checkpoint_every:
      flush()
      pending = None
      checkpoint.save(mngr, step, states, {"step": step, "padded_runs": padded})
    prev = step
  if pending:
    flush()
  trackers.close()
  bar.close()
  mngr.wait_until_finished()
  mngr.close()
  if not primary:
    return workdir
  writer.close()

  summary = analysis.summarize(
    logs.read_metrics(workdir / "metrics.msgpack"), sweep.runs, cfg.threshold
  )
  logs.write_json_atomic(workdir / "summary.json", summary)
  plots.write_figures(workdir, threshold=cfg.threshold)
  if cfg.interp:
    from grokjax import interp  # matplotlib and the Fourier tools, only when asked for

    interp.write_figures(workdir)
  if points and progress:
    print(analysis.table(summary, sweep.runs, sweep.swept()))
    print(f"run directory: {workdir}")
  return workdir
