"""A sweep: config -> runs -> one compiled program per static signature -> the
training loop -> metrics.msgpack and Orbax checkpoints in the run directory (and
nothing else: summaries and figures are grokjax.report's, after training).

Run directory (one per sweep): config.json, runs.json, splits.npz (the table and
every run's train mask), metrics.msgpack, checkpoints/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from grokjax import checkpoint, data, integrations, layout, lock, logs, registry, train
from grokjax import config as config_lib
from grokjax.errors import Interrupted, UserError, disk_full, moved
from grokjax.model import make_model

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


@dataclasses.dataclass(frozen=True)
class Program:
  """Runs that share a static signature, trained by one compiled program."""

  static: train.Static
  runs: np.ndarray  # int [K_p]: the runs' positions in Sweep.runs


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Everything host-side a sweep trains from.

  ``table`` holds the rows of every operation of the sweep (one after another, in
  a shared vocabulary); run k trains on ``train_masks[k]`` and is validated on
  ``val_masks[k]``, both over the whole table. ``programs`` partition the runs.
  """

  cfg: object
  runs: list[dict]
  table: data.Table
  train_masks: np.ndarray  # bool [K, N]
  val_masks: np.ndarray  # bool [K, N]
  batch_sizes: np.ndarray  # int [K]
  programs: list[Program]

  def program_of(self, k: int) -> tuple[Program, int]:
    """The program that trains run k, and the run's position in it."""
    for prog in self.programs:
      where = np.flatnonzero(prog.runs == k)
      if len(where):
        return prog, int(where[0])
    raise UserError(f"run {k} is not in this sweep; runs are 0..{len(self.runs) - 1}")

  def model(self, k: int = 0):
    """The Flax module run k trains."""
    return self.program_of(k)[0].static.model

  def steps_per_epoch(self, k: int = 0) -> int:
    """Updates per pass over run k's training set: N_train // its batch size."""
    return int(self.train_masks[k].sum() // self.batch_sizes[k])


def _ops(runs: list[dict]) -> list[str]:
  """The operations of a sweep's runs, in order of first appearance."""
  return list(dict.fromkeys(r["op"] for r in runs))


def _entries(run: dict) -> tuple:
  """The optimizer, model and loss a run names, and the methods it uses."""
  opt = registry.lookup(registry.OPTIMIZERS, run["optimizer"], "optim.name")
  mod = registry.lookup(registry.MODELS, run["model"], "model.name")
  loss = registry.lookup(registry.LOSSES, run["loss"], "method.loss")
  used = tuple(m for m in registry.METHODS.values() if m.active(run))
  return opt, mod, loss, used


def _static(run: dict, entries: tuple) -> dict:
  """The run's static values (field -> value) of its optimizer, model, loss and methods."""
  opt, mod, loss, used = entries
  return {k.field: run[k.field] for e in (opt, loss, mod, *used) for k in e.keys if not k.per_run}


def signature(run: dict) -> tuple:
  """What a run's program depends on: its optimizer, model, loss, the methods it uses
  (``Method.active``) and the static values of all of them."""
  entries = _entries(run)
  opt, mod, loss, used = entries
  names = tuple(m.name for m in used)
  return (opt.name, mod.name, loss.name, names, tuple(_static(run, entries).items()))


def _program(sweep_cfg, runs: list[dict], members: list[int], table, batch: int) -> Program:
  first = runs[members[0]]
  entries = _entries(first)  # the same for every member (signature)
  opt, mod, loss, used = entries
  values = _static(first, entries)
  by_path = {k.path.split(".", 1)[1]: values[k.field] for k in mod.keys}  # make_model's keys
  model = make_model(dict(name=mod.name, **by_path), table.vocab_size, table.n)
  static = train.Static(
    model,
    opt,
    used,
    values,
    loss,
    batch,
    sweep_cfg.eval_batch,
    sweep_cfg.eval_float64,
    sweep_cfg.compute_dtype,
  )
  train.check_forward(static)  # dropout on a model without it: refused before any write
  return Program(static, np.asarray(members))


def _check_memory(cfg, ops: list[str], k: int) -> None:
  """Refuses a table that would not fit: p = 10007 means 1e8 equations."""
  rows = sum(data.num_elements(op, cfg.p) ** 2 for op in ops)
  # Building the table peaks at ~120 bytes a row (int64 grids, the formula, the int32
  # copy); each run then holds its masks and row indices (6 bytes a row).
  need = rows * (120 + 6 * k)
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if need > total / 2:
    raise UserError(
      f"p={cfg.p} makes a table of {rows:,} equations: {need / 2**30:.1f} GiB for {k} runs "
      f"before training, more than half of this machine's {total / 2**30:.0f} GiB; use a "
      "smaller p"
    )


def build(cfg) -> Sweep:
  """Validates cfg and builds the table, the runs, their splits and their programs."""
  cfg = config_lib.validate(cfg)
  runs = config_lib.run_grid(cfg)
  ops = _ops(runs)
  _check_memory(cfg, ops, len(runs))
  table, op_rows = data.stack_tables(ops, cfg.p)
  train_masks = np.zeros((len(runs), len(table.labels)), bool)
  val_masks = np.zeros_like(train_masks)
  for k, r in enumerate(runs):
    rows = op_rows[ops.index(r["op"])]
    train = data.split_mask(rows.stop - rows.start, r["train_frac"], r["split_seed"])
    train_masks[k, rows], val_masks[k, rows] = train, ~train
  n_train = train_masks.sum(1)
  batch_sizes = np.maximum(np.minimum(cfg.batch_size, (n_train * cfg.batch_frac).astype(int)), 1)
  groups: dict[tuple, list[int]] = {}
  for k, run in enumerate(runs):
    groups.setdefault(signature(run), []).append(k)
  programs = [
    _program(cfg, runs, members, table, int(batch_sizes[members].max()))
    for members in groups.values()
  ]
  return Sweep(cfg, runs, table, train_masks, val_masks, batch_sizes, programs)


def run_arrays(sweep: Sweep, prog: Program, multiple: int = 1) -> train.Run:
  """A program's runs as stacked arrays, padded with copies of its last run to a
  multiple of ``multiple`` (``device_inputs``: whole vmap groups on every device).
  Each run gets the rows of its operation, padded to the largest operation's count."""
  k = len(prog.runs)
  idx = prog.runs[layout.pad_index(k, layout.padded_runs(k, multiple))]
  own = sweep.train_masks[idx] | sweep.val_masks[idx]  # [K', N]
  m = int(own.sum(1).max())
  # Stable sort puts each run's own rows first, in table order.
  rows = np.argsort(~own, axis=1, kind="stable")[:, :m].astype(np.int32)
  valid = np.take_along_axis(own, rows, 1)
  runs = [sweep.runs[i] for i in idx]
  static = prog.static
  entries = (static.optimizer, static.loss, *static.methods)
  per_run = [k for e in entries for k in e.keys if k.per_run]
  hparams = {k.field: np.asarray([float(r[k.field]) for r in runs], np.float32) for k in per_run}
  return train.Run(
    seed=np.asarray([r["seed"] for r in runs], np.int32),
    rows=rows,
    valid=valid,
    train_mask=np.take_along_axis(sweep.train_masks[idx], rows, 1),
    batch_size=sweep.batch_sizes[idx].astype(np.int32),
    hparams=hparams,
  )


def device_inputs(sweep: Sweep, padding=None) -> tuple[data.Table, list[train.Run]]:
  """The table (replicated) and each program's runs, split over every device on the
  run axis and padded so that each device holds whole vmap groups
  (``layout.padded_runs``), or to a multiple of ``padding[i]`` runs."""
  m = layout.mesh()
  runs = []
  for i, prog in enumerate(sweep.programs):
    group = layout.vmap_group(sweep.cfg)
    multiple = padding[i] if padding else layout.padded_runs(1, group, jax.device_count())
    runs.append(jax.device_put(run_arrays(sweep, prog, multiple), NamedSharding(m, P("runs"))))
  return jax.device_put(sweep.table, NamedSharding(m, P())), runs


def abstract_states(static: train.Static, table, runs, k: int | None = None, sharding=None):
  """Shapes, dtypes and shardings of a program's batched state (``runs``' run axis and
  sharding, or ``k`` runs and ``sharding`` if given), without computing it."""
  sharding = sharding or runs.seed.sharding  # every state leaf has the run axis first
  shapes = jax.eval_shape(jax.vmap(lambda r: train.init_state(static, table, r)), runs)
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct((k or x.shape[0], *x.shape[1:]), x.dtype, sharding=sharding),
    shapes,
  )


def sweep_fns(sweep: Sweep) -> list[tuple]:
  """Per program, the jitted (init, chunk) of ``layout.make_sweep_fns``: groups of
  ``layout.vmap_group`` runs, the run axis split over every device."""
  cfg = sweep.cfg
  precision = None if cfg.matmul_precision == "default" else cfg.matmul_precision
  group, m = layout.vmap_group(cfg), layout.mesh()
  return [layout.make_sweep_fns(p.static, precision, group, m) for p in sweep.programs]


def _saved_padding(sweep: Sweep, meta: dict) -> list[int]:
  """Each program's run-axis length in a checkpoint (its ``padded_runs``), once its
  ``format`` is this version's and its programs are this sweep's."""
  fmt = meta.get("format", 1)
  if fmt != checkpoint.FORMAT:
    raise UserError(
      f"the checkpoints are in grokjax's checkpoint format {fmt}, this version reads format "
      f"{checkpoint.FORMAT} ({checkpoint.FORMATS[checkpoint.FORMAT]}); finish or resume them "
      "with the grokjax that made them, or train again in a new --workdir"
    )
  saved = meta["padded_runs"]
  if len(saved) != len(sweep.programs) or any(
    n < len(p.runs) for n, p in zip(saved, sweep.programs)
  ):
    raise UserError(
      f"the checkpoints hold {saved} runs per program, this sweep has "
      f"{[len(p.runs) for p in sweep.programs]}: they are of another sweep; move the "
      "checkpoints folder away to start over"
    )
  return [int(n) for n in saved]


def restore(sweep: Sweep, mngr, table, runs, step: int | None = None):
  """(states per program, meta) of the checkpoint at ``step`` (default: the latest),
  or None without one: the one way a sweep's state is read back. The states come
  back in the layout of ``runs`` (``device_inputs``), whatever the device count and
  vmap group of the machine that saved them: a checkpoint saved with another
  padding is read whole, its runs taken and padded again."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  saved = _saved_padding(sweep, checkpoint.saved_meta(mngr, step))
  abstract = []
  for prog, r, n in zip(sweep.programs, runs, saved):
    whole = NamedSharding(r.seed.sharding.mesh, P())  # every device reads every run
    same = n == r.seed.shape[0]
    abstract.append(abstract_states(prog.static, table, r, n, None if same else whole))
  states, meta = checkpoint.restore(mngr, abstract, step)
  out = []
  for prog, r, n, state in zip(sweep.programs, runs, saved, states):
    if n != r.seed.shape[0]:
      idx = layout.pad_index(len(prog.runs), r.seed.shape[0])
      take = lambda s, idx=idx: jax.tree.map(lambda x: x[idx], s)
      state = jax.jit(take, out_shardings=r.seed.sharding)(state)
    out.append(state)
  return out, meta


def default_workdir(cfg) -> Path:
  return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_path(workdir: Path) -> None:
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


def _check_workdir(workdir: Path, sweep: Sweep, reconfigure: bool) -> None:
  """Refuses, before anything is written, a workdir that cannot hold this sweep: a
  file, one without write permission, one holding something else or another sweep,
  or a --reconfigure that would take a sweep back below the steps it has trained."""
  _check_path(workdir)
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


def checkpoint_steps(workdir: Path) -> list[int]:
  """Steps of the finished checkpoints in RUN_DIR/checkpoints (folders named by their
  step; a save cut short is a ``<step>.orbax-checkpoint-tmp`` folder, not counted)."""
  folder = Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


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


def _check_contents(workdir: Path, sweep: Sweep, saved_cfg) -> None:
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


def _check_runs_json(workdir: Path, sweep: Sweep) -> None:
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


def _splits(sweep: Sweep) -> dict[str, np.ndarray]:
  return dict(
    inputs=sweep.table.inputs,
    labels=sweep.table.labels,
    train_masks=sweep.train_masks,
    val_masks=sweep.val_masks,
  )


def _check_splits(workdir: Path, sweep: Sweep) -> None:
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


def _write_workdir(workdir: Path, sweep: Sweep) -> None:
  """config.json, runs.json and splits.npz (kept if there: the same splits)."""
  if not (workdir / "splits.npz").exists():
    tmp = workdir / "splits.npz.tmp"
    with open(tmp, "wb") as f:
      np.savez_compressed(f, **_splits(sweep))
    os.replace(tmp, workdir / "splits.npz")
  logs.write_json_atomic(workdir / "runs.json", sweep.runs)
  logs.write_json_atomic(workdir / "config.json", config_lib.to_json(sweep.cfg))


def _record(step: int, metrics: list[dict], sweep: Sweep) -> dict:
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


def _restore_newest(sweep: Sweep, mngr, table, runs, workdir: Path):
  """(states, meta) of the newest checkpoint that restores, or None without one. A
  damaged newer one is moved aside to RUN_DIR/damaged/ and named in one line."""
  steps = sorted(mngr.all_steps(), reverse=True)
  failed = []
  for step in steps:
    try:
      meta = checkpoint.saved_meta(mngr, step)
    except Exception as e:
      failed.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
      continue
    _saved_padding(sweep, meta)  # a checkpoint of another sweep: refused, not "damaged"
    try:
      restored = restore(sweep, mngr, table, runs, step)
    except Exception as e:  # Orbax raises many kinds for missing or truncated files
      failed.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
      continue
    for bad, reason in failed:
      log.warning(
        "checkpoint at step %d does not restore (%s); moved to %s, resuming from step %d",
        bad,
        reason,
        workdir / "damaged",
        step,
      )
      (workdir / "damaged").mkdir(exist_ok=True)
      os.replace(workdir / "checkpoints" / str(bad), workdir / "damaged" / str(bad))
    if failed:
      mngr.reload()
    return restored
  if failed:
    raise UserError(
      f"no checkpoint in {workdir / 'checkpoints'} restores (steps {[s for s, _ in failed]}; "
      f"newest: {failed[0][1]}); move that folder away to start the sweep over"
    )
  return None


MAX_STEPS = 2**31 - 1  # a run's step counter is int32
MAX_EVALS = 1_000_000  # evaluation points of one sweep: records in metrics.msgpack


def _memory_limit() -> tuple[float, str]:
  """Bytes a device may hold, and what they are (an accelerator's own memory; on CPU
  half the machine's memory, as for the table)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return float(stats["bytes_limit"]), f"the {jax.local_devices()[0].device_kind}'s memory"
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return total / 2, f"half of this machine's {total / 2**30:.0f} GiB"


def _check_budget(sweep: Sweep) -> None:
  """Refuses, before anything is written, a sweep that cannot run: more steps than
  a step counter holds, more evaluations than a log should, or states that do not
  fit in memory (parameters, optimizer state and gradients of every run of a device)."""
  cfg = sweep.cfg
  if cfg.steps > MAX_STEPS:
    raise UserError(
      f"steps={cfg.steps} is more than a run can count ({MAX_STEPS:,}); give fewer --config.steps"
    )
  evals = cfg.eval_points if cfg.eval_schedule == "log" else cfg.steps // cfg.eval_every
  if evals > MAX_EVALS:
    fix = "--config.eval_points" if cfg.eval_schedule == "log" else "a larger --config.eval_every"
    raise UserError(
      f"{evals:,} evaluations (steps={cfg.steps}, eval_every={cfg.eval_every}, "
      f"eval_schedule={cfg.eval_schedule}) is more than the {MAX_EVALS:,} a sweep may log; "
      f"give {fix}"
    )
  need = sweep.table.inputs.nbytes + sweep.table.labels.nbytes
  d = jax.device_count()
  for prog in sweep.programs:
    run = jax.tree.map(lambda x: x[0], run_arrays(sweep, prog))
    # the table an argument too: traced as in training, never a host array to a model
    shapes = jax.eval_shape(lambda t, r, s=prog.static: train.init_state(s, t, r), sweep.table, run)
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes.params))
    per_device = layout.padded_runs(len(prog.runs), layout.vmap_group(cfg), d) // d
    need += per_device * (state + params)  # + the gradients
  limit, what = _memory_limit()
  if need > limit:
    raise UserError(
      f"the sweep's states need {need / 2**30:,.1f} GiB a device (parameters, optimizer "
      f"state and gradients of {len(sweep.runs)} runs), more than {what}; use a smaller "
      "model (model.width, model.num_layers) or fewer runs"
    )


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
  sweep = build(cfg)
  cfg = sweep.cfg
  _check_budget(sweep)
  if jax.process_count() > 1 and not workdir:
    raise UserError("a sweep over several processes needs --workdir (one directory for all)")
  workdir = Path(workdir) if workdir else default_workdir(cfg)
  # Every process trains its share of the runs; process 0 alone writes files (the
  # checkpoints are Orbax's, written by all).
  primary = jax.process_index() == 0
  trackers = integrations.Writers()
  _check_path(workdir)
  new = not workdir.exists()
  if primary:
    _check_workdir(workdir, sweep, reconfigure)
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


def _wait_saves(mngr, timeout: float) -> bool:
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


def _train(sweep: Sweep, workdir: Path, primary: bool, trackers, progress: bool) -> None:
  cfg = sweep.cfg
  _barrier("workdir")
  table, runs = device_inputs(sweep)
  fns = sweep_fns(sweep)
  mngr = checkpoint.manager(workdir, cfg.checkpoint_keep)
  closed, failed = False, True
  try:
    _train_from(sweep, workdir, primary, trackers, progress, table, runs, fns, mngr)
    failed = False
  except KeyboardInterrupt:
    closed = not _wait_saves(mngr, SAVE_WAIT_S)  # an unfinished save is left to the next run
    steps = checkpoint_steps(workdir)
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


def _train_from(sweep, workdir, primary, trackers, progress, table, runs, fns, mngr) -> None:
  cfg = sweep.cfg
  padded = [int(r.seed.shape[0]) for r in runs]
  restored = _restore_newest(sweep, mngr, table, runs, workdir)
  start = 0
  if restored:
    states, meta = restored
    start = int(meta["step"])
  else:
    states = [init(table, r) for (init, _), r in zip(fns, runs)]
  if primary:
    _write_workdir(workdir, sweep)
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
    desc=f"{', '.join(_ops(sweep.runs))} (p={cfg.p}), {len(sweep.runs)} runs",
  )
  writer = logs.MetricWriter(workdir / "metrics.msgpack") if primary else None
  pending, prev = None, start

  def flush():
    record = _record(*pending, sweep)
    if not primary:
      return
    writer.write(record)
    trackers.write(record)
    bar.update(record["step"] - bar.n)
    bar.set_postfix(
      train_acc=f"{np.nanmedian(record['train_acc']):.3f}",
      val_acc=f"{np.nanmedian(record['val_acc']):.3f}",
      refresh=False,
    )

  try:
    for step in points:
      # Dispatch the next chunk of every program before fetching the last one's
      # metrics, so the device never waits on logging.
      out = [chunk(table, r, st, step - prev) for (_, chunk), r, st in zip(fns, runs, states)]
      states, metrics = [o[0] for o in out], [o[1] for o in out]
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
    mngr.wait_until_finished()
  finally:
    bar.close()
    if writer:
      writer.close()


__getattr__ = moved("grokjax.sweep", {n: f"grokjax.layout.{n}" for n in ("mesh", "vmap_group")})
