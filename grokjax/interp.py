"""Progress measures (Nanda et al. 2023) of a sweep's add/sub runs, walked over its
saved checkpoints: which runs, which steps, their parameters, the key frequencies,
every registered measure (grokjax.fourier), and the summary written as interp.json.

Measures come from checkpoints rather than from the training loop: training pays
nothing, and any sweep that kept its checkpoints can be analysed. The time
resolution is the checkpoint spacing (``checkpoint_every``, ``checkpoint_keep``).
The op of a multiplicative group (mul, div) is circular over the discrete log, not
over x; it, and the non-abelian or polynomial ops, are refused. The figures are
grokjax.plots' ``interp_spectrum``, ``interp_measures`` and ``interp_circle``.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from grokjax import analysis, fourier
from grokjax.errors import UserError
from grokjax.fourier import SIGNS


class Measures(NamedTuple):
  """Progress measures of a sweep's supported runs at every checkpoint."""

  runs: list[int]  # runs.json positions measured
  steps: np.ndarray  # int [C]: checkpoint steps (0 = the initial parameters)
  keys: list[np.ndarray]  # per run, its key frequencies (found at the last checkpoint)
  values: dict  # name -> [C, R] (norms [C, R, F], embed [C, R, p, d])


def measured_runs(rd) -> list[int]:
  """The add/sub runs of a sweep (a UserError when there are none)."""
  runs = [k for k, r in enumerate(rd.runs) if r.get("op") in SIGNS]
  if not runs:
    fourier.check_op(rd.runs[0].get("op"))
  return runs


def compute(rd, max_keys: int | None = None) -> Measures:
  """Measures every add/sub run of the run directory ``rd`` (grokjax.rundir.RunDir)
  at step 0 and at every kept checkpoint, vmapped over the runs of each program;
  key frequencies from each run's last checkpoint."""
  runs = measured_runs(rd)
  sw = rd.sweep()
  p = sw.cfg.p
  for k in runs:
    if (
      "Embed_0"
      not in jax.eval_shape(sw.model(k).init, jax.random.key(0), sw.table.inputs[:1])["params"]
    ):
      raise UserError(
        f"model.name={rd.runs[k].get('model')!r} has no token embedding; progress measures "
        "need the transformer"
      )
  steps = rd.steps()
  if not steps:
    raise UserError(
      f"{rd.path} has no checkpoints; train with checkpoint_every/checkpoint_keep set "
      "(configs/interp.py keeps one every 100 steps)"
    )
  grids = {
    k: fourier.make_grid(
      sw.table.inputs,
      sw.table.labels,
      sw.train_masks[k] | sw.val_masks[k],
      p,
      SIGNS[rd.runs[k]["op"]],
    )
    for k in runs
  }
  last = rd.params(steps[-1], sw)
  keys = {
    k: fourier.key_frequencies(
      np.asarray(fourier.freq_norms(last[k]["Embed_0"]["embedding"][:p])), max_keys
    )
    for k in runs
  }
  # One vmapped measure function per program (its runs share a model).
  groups = [[k for k in prog.runs.tolist() if k in grids] for prog in sw.programs]
  groups = [(sw.model(g[0]), g) for g in groups if g]
  stack = lambda xs: jnp.asarray(np.stack(xs))
  inputs = {
    tuple(g): [stack([getattr(grids[k], f) for k in g]) for f in ("inputs", "labels", "phase")]
    for _, g in groups
  }
  all_steps = sorted({0, *steps})
  per_step = []
  for step in all_steps:
    params = last if step == steps[-1] else rd.params(step, sw)
    out = {}
    for model, g in groups:
      fn = jax.jit(jax.vmap(fourier.make_measure_fn(model, p)))
      train_w = stack([sw.train_masks[k][grids[k].rows].astype(np.float32) for k in g])
      key_mask = stack([np.isin(np.arange(fourier.num_frequencies(p)), keys[k]) for k in g])
      batch = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *[params[k] for k in g])
      values = jax.device_get(
        fn(batch, *inputs[tuple(g)][:2], train_w, inputs[tuple(g)][2], key_mask)
      )
      for j, k in enumerate(g):
        out[k] = {name: v[j] for name, v in values.items()}
    per_step.append(out)
  values = {
    name: np.stack([np.stack([o[k][name] for k in runs]) for o in per_step])
    for name in per_step[0][runs[0]]
  }
  return Measures(runs, np.asarray(all_steps), [keys[k] for k in runs], values)


def checkpoint_at(steps, step) -> int:
  """Index of the first checkpoint at or after ``step`` (the last if none)."""
  return int(min(np.searchsorted(steps, step), len(steps) - 1))


def _first_below(steps, values, level):
  hit = np.flatnonzero(values <= level)
  return int(steps[hit[0]]) if len(hit) else None


def summary(rd, m: Measures) -> list[dict]:
  """Per measured run: key frequencies and their share of the embedding norm, the
  phase boundaries (train/val 99% steps), and when each measure moved."""
  summ = analysis.summarize_arrays(rd.metrics, rd.runs, rd.threshold)
  val50 = analysis.first_step(rd.metrics["step"], rd.metrics["val_acc"], 0.5)
  out = []
  for j, k in enumerate(m.runs):
    v = {name: m.values[name][:, j] for name in ("gini", "restricted_loss", "excluded_loss")}
    r = v["restricted_loss"]
    # "falls": halfway (in log) from its value after memorisation to its final value
    t_train = summ[k]["train_step"] or 0
    start = r[checkpoint_at(m.steps, t_train)]
    half = float(np.exp((np.log(start) + np.log(r[-1])) / 2))
    after = m.steps >= t_train
    norms = m.values["embed_norms"][:, j]
    out.append(
      dict(
        run=rd.runs[k]["index"],
        key_frequencies=[int(x) for x in m.keys[j]],
        key_share_final=float(m.values["key_share"][-1, j]),
        key_share_initial=float(m.values["key_share"][0, j]),
        top_share_final={
          n: fourier.key_share(norms[-1], np.argsort(-norms[-1][1:])[:n] + 1)
          for n in (1, 2, 3, 4, 5, 6)
        },
        train_step=summ[k]["train_step"],
        val50_step=val50[k],
        val_step=summ[k]["val_step"],
        restricted_halfway_step=_first_below(m.steps[after], r[after], half),
        **{f"{name}_at": _trace(m.steps, val) for name, val in v.items()},
        weight_norm_sq_at=_trace(m.steps, m.values["weight_norm_sq"][:, j]),
      )
    )
  return out


def _trace(steps, values):
  return {int(s): round(float(x), 5) for s, x in zip(steps, values)}


def write_json(rd, summ: list[dict]):
  """RUN_DIR/interp.json: the per-run summary of the measures."""
  path = rd.path / "interp.json"
  path.write_text(json.dumps(summ, indent=1))
  return path
