"""A sweep planned on the host: config -> runs -> their splits -> one program per
static signature, and whether it fits, before anything is compiled or written.

``build`` validates a config and returns a ``Sweep`` (the table, every run's train
and validation rows and batch size, the programs that partition the runs);
``run_arrays`` gives a program's runs as the stacked arrays training takes;
``check_budget`` refuses a sweep that cannot run (steps, evaluations, memory).
Nothing here compiles or touches a device's memory: shapes are traced abstractly.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from grokjax import config as config_lib
from grokjax import data, layout, registry, train
from grokjax.errors import UserError
from grokjax.model import make_model


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


def ops(runs: list[dict]) -> list[str]:
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
  names = ops(runs)
  _check_memory(cfg, names, len(runs))
  table, op_rows = data.stack_tables(names, cfg.p)
  train_masks = np.zeros((len(runs), len(table.labels)), bool)
  val_masks = np.zeros_like(train_masks)
  for k, r in enumerate(runs):
    rows = op_rows[names.index(r["op"])]
    mask = data.split_mask(rows.stop - rows.start, r["train_frac"], r["split_seed"])
    train_masks[k, rows], val_masks[k, rows] = mask, ~mask
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


def check_budget(sweep: Sweep) -> None:
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
