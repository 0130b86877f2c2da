"""A sweep's state on the devices: its inputs placed, its programs compiled, its
checkpoints read back, whatever the machine that saved them.

``device_inputs`` puts the table and each program's runs on the mesh (whole vmap
groups on every device, ``grokjax.layout``), ``sweep_fns`` compiles each program's
(init, chunk), and ``restore`` is the one way a saved state comes back: in this
machine's layout, its checkpoint format checked (``grokjax.checkpoint.FORMAT``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grokjax import checkpoint, data, layout, train
from grokjax.errors import UserError
from grokjax.plan import Sweep, run_arrays

log = logging.getLogger(__name__)


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


def saved_padding(sweep: Sweep, meta: dict) -> list[int]:
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
  saved = saved_padding(sweep, checkpoint.saved_meta(mngr, step))
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


def restore_newest(sweep: Sweep, mngr, table, runs, workdir: Path):
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
    saved_padding(sweep, meta)  # a checkpoint of another sweep: refused, not "damaged"
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
