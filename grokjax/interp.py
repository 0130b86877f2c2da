"""Progress measures (Nanda et al. 2023) of a sweep's add/sub runs, walked over its
saved checkpoints: which runs, which steps, their parameters, the key frequencies
(Nanda's: the dominant frequencies of the last MLP's neurons at the last checkpoint),
every registered measure (grokjax.fourier) in float64, and the summary written as
interp.json, with each measure's correlation with validation accuracy over the
checkpoints. docs/progress_measures.md writes the definitions out.

Measures come from checkpoints rather than from the training loop: training pays
nothing, and any sweep that kept its checkpoints can be analysed. The time
resolution is the checkpoint spacing (``checkpoint_every``, ``checkpoint_keep``).
The op of a multiplicative group (mul, div) is circular over the discrete log, not
over x; it, and the non-abelian or polynomial ops, are refused. The figures are
grokjax.plots' ``interp_spectrum``, ``interp_measures`` and ``interp_circle``.
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple

import jax
import numpy as np

from grokjax import analysis, fourier, registry
from grokjax.errors import UserError
from grokjax.fourier import SIGNS
from grokjax.rundir import DamagedCheckpoint


class Measures(NamedTuple):
  """Progress measures of a sweep's supported runs at every checkpoint."""

  runs: list[int]  # runs.json positions measured
  steps: np.ndarray  # int [C]: checkpoint steps (0 = the initial parameters)
  keys: list[np.ndarray]  # per run, its key frequencies (found at the last checkpoint)
  values: dict  # name -> [C, R] (norms [C, R, F], embed [C, R, p, d])
  neuron_freqs: list[np.ndarray] = ()  # per run, [M]: each neuron's dominant frequency (last)
  neuron_frac: list[np.ndarray] = ()  # per run, [M]: the variance fraction it explains


def measured_runs(rd) -> list[int]:
  """The add/sub runs of a sweep (a UserError when there are none)."""
  runs = [k for k, r in enumerate(rd.runs) if r.get("op") in SIGNS]
  if not runs:
    fourier.check_op(rd.runs[0].get("op"))
  return runs


def _skip(steps: list[int], e) -> list[int]:
  """``steps`` without the damaged checkpoint's step ``e.step``, with a warning."""
  logging.getLogger(__name__).warning("%s; skipped", e)
  if len(steps) == 1:
    raise UserError(f"{e}; no other checkpoint to measure")
  return [s for s in steps if s != e.step]


def compute(rd, max_keys: int | None = None) -> Measures:
  """Measures every add/sub run of the run directory ``rd`` (grokjax.rundir.RunDir)
  at step 0 and at every kept checkpoint, vmapped over the runs of each program, in
  float64 (forward pass included). Key frequencies: Nanda's, from the last MLP's
  neurons at each run's last checkpoint (``max_keys``: at most that many, those most
  neurons have), used at every checkpoint."""
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
  # One vmapped neuron function and one measure function per group: the runs of a
  # program (they share a model) whose measures and measure keys agree (static),
  # traced and run with float64 on.
  groups = {}
  for i, prog in enumerate(sw.programs):
    for k in prog.runs.tolist():
      if k in grids:
        active = fourier.active_measures(rd.runs[k])
        key = (i, json.dumps(active, sort_keys=True))
        groups.setdefault(key, (sw.model(k), active, []))[2].append(k)
  groups = list(groups.values())
  stack = lambda xs: np.stack(xs)
  fixed = {
    tuple(g): dict(
      inputs=stack([grids[k].inputs for k in g]),
      labels=stack([grids[k].labels for k in g]),
      train_w=stack([sw.train_masks[k][grids[k].rows].astype(np.float64) for k in g]),
      phase=stack([grids[k].phase for k in g]),
    )
    for _, _, g in groups
  }
  with jax.enable_x64(True):
    fns = {
      tuple(g): (
        jax.jit(jax.vmap(fourier.make_neuron_fn(model, p))),
        jax.jit(jax.vmap(fourier.make_measure_fn(model, p, active))),
      )
      for model, active, g in groups
    }
  batch = lambda params, g: jax.tree.map(lambda *xs: np.stack(xs), *[params[k] for k in g])
  while True:  # the newest checkpoint that restores; a damaged one is skipped, said
    try:
      last = rd.params(steps[-1], sw)
      break
    except DamagedCheckpoint as e:
      steps = _skip(steps, e)
  freqs, fracs, keys = {}, {}, {}
  for _, _, g in groups:
    with jax.enable_x64(True):
      neurons = np.asarray(fns[tuple(g)][0](batch(last, g), fixed[tuple(g)]["inputs"]))
    for j, k in enumerate(g):
      freqs[k], fracs[k] = fourier.neuron_frequencies(neurons[j], p)
      keys[k] = fourier.neuron_key_frequencies(freqs[k], max_keys)
  all_steps = sorted({0, *steps})
  per_step = []
  for step in all_steps:
    try:
      params = last if step == steps[-1] else rd.params(step, sw)
    except DamagedCheckpoint as e:
      all_steps = _skip(all_steps, e)
      continue
    out = {}
    for _, _, g in groups:
      f = fixed[tuple(g)]
      key_mask = stack([np.isin(np.arange(fourier.num_frequencies(p)), keys[k]) for k in g])
      with jax.enable_x64(True):
        values = jax.device_get(
          fns[tuple(g)][1](
            batch(params, g), f["inputs"], f["labels"], f["train_w"], f["phase"], key_mask
          )
        )
      for j, k in enumerate(g):
        out[k] = {name: np.asarray(v[j]) for name, v in values.items()}
    per_step.append(out)
  # every name any run has; a (scalar) measure a run is not active for: NaN
  names = list(dict.fromkeys(n for k in runs for n in per_step[0][k]))
  values = {
    name: np.stack([np.stack([o[k].get(name, np.nan) for k in runs]) for o in per_step])
    for name in names
  }
  return Measures(
    runs,
    np.asarray(all_steps),
    [keys[k] for k in runs],
    values,
    [freqs[k] for k in runs],
    [fracs[k] for k in runs],
  )


def measure_names(m: Measures, j: int | None = None) -> list[str]:
  """The registered measures in ``m`` (registration order), of the ``j``-th measured
  run only when given (a measure a run is not ``active`` for holds NaN for it)."""
  return [
    name
    for name in registry.MEASURES
    if name in m.values and (j is None or not np.isnan(m.values[name][:, j]).all())
  ]


def checkpoint_at(steps, step) -> int:
  """Index of the first checkpoint at or after ``step`` (the last if none)."""
  return int(min(np.searchsorted(steps, step), len(steps) - 1))


def _first_below(steps, values, level):
  hit = np.flatnonzero(values <= level)
  return int(steps[hit[0]]) if len(hit) else None


def summary(rd, m: Measures) -> list[dict]:
  """Per measured run: key frequencies (Nanda's, from the neurons; and the embedding
  rule's, for comparison), the neurons' dominant frequencies, the key frequencies'
  share of the embedding norm, the phase boundaries (train/val 99% steps), each
  registered measure the run has at every checkpoint (``<name>_at``), and each one's
  correlation with val accuracy over the checkpoints (``val_acc_correlation``)."""
  summ = analysis.summarize_arrays(rd.metrics, rd.runs, rd.threshold)
  val50 = analysis.first_step(rd.metrics["step"], rd.metrics["val_acc"], 0.5)
  out = []
  for j, k in enumerate(m.runs):
    v = {name: m.values[name][:, j] for name in measure_names(m, j)}
    r = v["restricted_loss"]
    # "falls": halfway (in log) from its value after memorisation to its final value
    t_train = summ[k]["train_step"] or 0
    start = r[checkpoint_at(m.steps, t_train)]
    half = float(np.exp((np.log(start) + np.log(r[-1])) / 2))
    after = m.steps >= t_train
    norms = m.values["embed_norms"][:, j]
    neurons = {}
    if m.neuron_freqs:
      f, c = np.unique(m.neuron_freqs[j], return_counts=True)
      neurons = dict(
        neuron_freq_counts={int(a): int(b) for a, b in zip(f, c)},
        neuron_frac_explained_median=round(float(np.median(m.neuron_frac[j])), 5),
      )
    val_acc = val_at(rd, m.steps, k)
    out.append(
      dict(
        run=rd.runs[k]["index"],
        key_frequencies=[int(x) for x in m.keys[j]],
        key_frequencies_embedding=[int(x) for x in fourier.key_frequencies(norms[-1])],
        **neurons,
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
        excluded_peak_step=int(m.steps[np.argmax(v["excluded_loss"])]),
        **{f"{name}_at": _trace(m.steps, val) for name, val in v.items()},
        val_acc_at=_trace(m.steps, val_acc),
        val_acc_correlation={
          name: dict(
            spearman=_round(analysis.correlation(val, val_acc, rank=True)),
            pearson=_round(analysis.correlation(val, val_acc)),
          )
          for name, val in v.items()
        },
      )
    )
  return out


def val_at(rd, steps, k: int) -> np.ndarray:
  """Run ``k``'s val accuracy at each of ``steps``: the last evaluation at or before
  it (checkpoints fall on evaluations when checkpoint_every is a multiple of
  eval_every)."""
  logged = rd.metrics["step"]
  at = np.maximum(np.searchsorted(logged, steps, side="right") - 1, 0)
  return rd.metrics["val_acc"][at, k]


def _round(x):
  return None if x is None else round(x, 5)


def _trace(steps, values):
  return {int(s): round(float(x), 5) for s, x in zip(steps, values)}


def write_json(rd, summ: list[dict]):
  """RUN_DIR/interp.json: the per-run summary of the measures."""
  path = rd.path / "interp.json"
  path.write_text(json.dumps(summ, indent=1))
  return path
