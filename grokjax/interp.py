"""Progress measures of Nanda et al. (2023) for modular addition and subtraction.

A model that groks ``x ± y mod p`` embeds the tokens on a few circles, one per key
frequency k: token x sits at angle w_k x (w_k = 2πk/p). This module measures that
from a sweep's saved checkpoints, after the fact:

- ``fourier_basis(p)``: the orthonormal Fourier basis over Z_p (constant, then cos
  and sin of w_k x for k = 1..p//2); ``freq_norms`` the norm of a [p, d] matrix
  (the token embedding, the unembedding's columns) per frequency.
- ``key_frequencies``: the frequencies above the largest gap of the sorted norms.
- ``measures``: per checkpoint and run, the Gini coefficient of the embedding's
  frequency norms, the restricted loss (logits reduced to their components along
  cos/sin w_k(x ± y − z) for the key k, on the full table), the excluded loss (those
  components removed, on the training rows) and the total squared weight norm.
- ``write_figures(run_dir)``: the spectra, the measures beside the accuracies with
  the three phases shaded, the embedding circle; and ``interp.json``.

Measures come from checkpoints rather than from the training loop: training pays
nothing, and any sweep that kept its checkpoints can be analysed. The time
resolution is the checkpoint spacing (``checkpoint_every``, ``checkpoint_keep``).
The op of a multiplicative group (mul, div) is circular over the discrete log, not
over x; it, and the non-abelian or polynomial ops, are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from grokjax import analysis, checkpoint
from grokjax import config as config_lib
from grokjax.errors import UserError

SIGNS = {"add": 1, "sub": -1}  # answer z = x + sign * y (mod p)
FIGURES = ("spectrum", "measures", "circle")


def check_op(op: str) -> int:
  """The sign of y in the op's answer; a UserError for ops without this Fourier view."""
  if op not in SIGNS:
    raise UserError(
      f"op {op!r} has no Fourier view here; progress measures support "
      f"{' and '.join(SIGNS)} (x ± y mod p) only"
    )
  return SIGNS[op]


# --- Fourier basis and norms -------------------------------------------------------------------


def fourier_basis(p: int) -> np.ndarray:
  """[p, p] orthonormal rows over x = 0..p-1: the constant, then cos(w_k x), sin(w_k x)
  for k = 1..(p-1)//2 (w_k = 2πk/p), and cos(πx) last when p is even."""
  x = np.arange(p)
  rows = [np.ones(p) / np.sqrt(p)]
  for k in range(1, (p - 1) // 2 + 1):
    rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
  if p % 2 == 0:
    rows.append(np.cos(np.pi * x))
  basis = np.stack(rows)
  return basis / np.linalg.norm(basis, axis=1, keepdims=True)


def row_frequency(p: int) -> np.ndarray:
  """The frequency k of each row of ``fourier_basis(p)``: 0, 1, 1, 2, 2, ..."""
  return np.concatenate([[0], np.arange(2, p + 1) // 2])


def num_frequencies(p: int) -> int:
  """Frequencies 0..p//2, the constant included."""
  return p // 2 + 1


def freq_norms(m_PxD, basis_PxP=None):
  """Per frequency k = 0..p//2, the L2 norm of ``m``'s Fourier components along
  token axis 0 (both cos and sin of k); jnp in, jnp out."""
  p = m_PxD.shape[0]
  basis_PxP = fourier_basis(p) if basis_PxP is None else basis_PxP
  sq_P = jnp.sum(jnp.square(basis_PxP @ m_PxD), axis=1)
  onehot_PxF = np.eye(num_frequencies(p))[row_frequency(p)]
  return jnp.sqrt(sq_P @ onehot_PxF)


def gini(x):
  """Gini coefficient of non-negative values (0: all equal, -> 1: one holds all)."""
  x = jnp.sort(jnp.asarray(x))
  n = x.shape[-1]
  i = jnp.arange(1, n + 1)
  return jnp.sum((2 * i - n - 1) * x, -1) / (n * jnp.maximum(jnp.sum(x, -1), 1e-30))


def key_frequencies(norms_F, max_keys: int | None = None) -> np.ndarray:
  """The key frequencies of a trained model from its embedding's ``freq_norms``
  (index = frequency; the constant is ignored): sorted by squared norm, the ones
  above the largest ratio between neighbours among the top ``max_keys`` + 1
  (default half the frequencies). Returns them in increasing order."""
  sq = np.square(np.asarray(norms_F, np.float64)[1:])
  order = np.argsort(-sq, kind="stable")
  top = sq[order]
  m = min(max_keys or max(len(sq) // 2, 1), len(sq) - 1)
  if m < 1:
    return np.sort(order + 1)
  ratios = top[:m] / np.maximum(top[1 : m + 1], 1e-30 * top[0])
  return np.sort(order[: int(np.argmax(ratios)) + 1] + 1)


def key_share(norms_F, keys) -> float:
  """The share of the squared norm (constant excluded) that the ``keys`` hold."""
  sq = np.square(np.asarray(norms_F, np.float64))
  return float(sq[list(keys)].sum() / sq[1:].sum())


# --- restricted / excluded logits --------------------------------------------------------------


def phase_index(p: int, sign: int) -> np.ndarray:
  """[p, p, p] int: (x + sign * y - z) mod p over the grid (x, y, z)."""
  x, y, z = np.ix_(np.arange(p), np.arange(p), np.arange(p))
  return (x + sign * y - z) % p


def split_logits(logits_PxPxP, phase_PxPxP, key_mask_F):
  """(restricted, excluded) logits over the full grid (x, y, z): restricted keeps
  only the components along cos and sin of w_k(x ± y − z) for the frequencies in
  ``key_mask_F`` (the orthogonal projection onto them); excluded is the rest, so
  restricted + excluded == logits."""
  p = logits_PxPxP.shape[0]
  # Those directions depend on the grid only through s = phase; project the mean
  # logit of each s on the key frequencies' cos/sin rows of the 1-d basis.
  mean_P = jax.ops.segment_sum(logits_PxPxP.ravel(), phase_PxPxP.ravel(), p) / p**2
  basis = fourier_basis(p)
  keep_P = jnp.asarray(key_mask_F)[row_frequency(p)] & (row_frequency(p) > 0)
  rows = basis * keep_P[:, None]
  restricted = (rows.T @ (rows @ mean_P))[phase_PxPxP]
  return restricted, logits_PxPxP - restricted


def _xent(logits_NxC, labels_N, weights_N):
  logp = jax.nn.log_softmax(logits_NxC)
  nll = -jnp.take_along_axis(logp, labels_N[:, None], 1)[:, 0]
  return jnp.sum(nll * weights_N) / jnp.maximum(jnp.sum(weights_N), 1)


class Grid(NamedTuple):
  """One op's table arranged on the (x, y) grid, row x * p + y."""

  inputs: np.ndarray  # int32 [p*p, 4]
  labels: np.ndarray  # int32 [p*p]
  phase: np.ndarray  # int32 [p, p, p]
  rows: np.ndarray  # int [p*p]: the table row of each grid cell


def make_grid(inputs_Nx4, labels_N, own_N, p: int, sign: int) -> Grid:
  """The rows ``own_N`` of a table (one op, every (x, y) pair) in grid order."""
  rows = np.flatnonzero(own_N)
  if len(rows) != p * p:
    raise UserError(f"expected the full table of {p * p} rows, found {len(rows)}")
  rows = rows[np.argsort(inputs_Nx4[rows, 0] * p + inputs_Nx4[rows, 2], kind="stable")]
  return Grid(inputs_Nx4[rows], labels_N[rows], phase_index(p, sign).astype(np.int32), rows)


def make_measure_fn(model, p: int):
  """fn(params, inputs, labels, train_w, phase, key_mask) -> dict of one run's
  measures at one checkpoint (jit/vmap it over runs)."""
  basis = fourier_basis(p)

  def fn(params, inputs, labels, train_w, phase, key_mask):
    logits = model.apply({"params": params}, inputs)[:, :p].astype(jnp.float32)
    restricted, excluded = split_logits(logits.reshape(p, p, p), phase, key_mask)
    embed = params["Embed_0"]["embedding"][:p]
    norms = freq_norms(embed, basis)
    all_w = jnp.ones_like(train_w)
    return dict(
      gini=gini(norms[1:]),
      restricted_loss=_xent(restricted.reshape(p * p, p), labels, all_w),
      excluded_loss=_xent(excluded.reshape(p * p, p), labels, train_w),
      train_loss=_xent(logits, labels, train_w),
      test_loss=_xent(logits, labels, 1 - train_w),
      weight_norm_sq=sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params)),
      key_share=jnp.sum(jnp.where(key_mask, norms**2, 0)) / jnp.sum(norms[1:] ** 2),
      embed_norms=norms,
      unembed_norms=freq_norms(params["unembed"]["kernel"][:, :p].T, basis),
      embed=embed,
    )

  return fn


# --- from a run directory ----------------------------------------------------------------------


class Measures(NamedTuple):
  """Progress measures of a sweep's supported runs at every checkpoint."""

  runs: list[int]  # runs.json positions measured
  steps: np.ndarray  # int [C]: checkpoint steps (0 = the initial parameters)
  keys: list[np.ndarray]  # per run, its key frequencies (found at the last checkpoint)
  values: dict  # name -> [C, R] (norms [C, R, F], embed [C, R, p, d])


def compute(run_dir, max_keys: int | None = None) -> Measures:
  """Measures every add/sub run of the sweep in ``run_dir`` at step 0 and at every
  kept checkpoint, vmapped over runs; key frequencies from each run's last one."""
  from grokjax import sweep as sweep_lib  # sweep imports plots, not us; keep import light

  rd = analysis.load_run_dir(run_dir)
  sweep = sweep_lib.build(config_lib.from_saved(rd.config))
  p = sweep.cfg.p
  ops = [r["op"] for r in sweep.runs]
  runs = [k for k, op in enumerate(ops) if op in SIGNS]
  if not runs:
    check_op(ops[0])
  if (
    "Embed_0"
    not in jax.eval_shape(sweep.model.init, jax.random.key(0), sweep.table.inputs[:1])["params"]
  ):
    raise UserError(
      f"model.name={sweep.cfg.model.name!r} has no token embedding; progress measures need "
      "the transformer"
    )
  with checkpoint.manager(rd.path, keep=1 << 30) as mngr:
    steps = list(mngr.all_steps())
    if not steps:
      raise UserError(
        f"{rd.path} has no checkpoints; train with checkpoint_every/checkpoint_keep set "
        "(configs/interp.py keeps one every 100 steps)"
      )

    def params_at(step):
      """Stacked params of the measured runs; step 0 without a checkpoint: re-initialised."""
      if step == 0 and 0 not in steps:
        return initial_params(sweep, runs)
      state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
      return jax.tree.map(
        lambda x: jnp.asarray(np.asarray(x)[np.asarray(runs)]), state.state["params"]
      )

    grids = [
      make_grid(
        sweep.table.inputs,
        sweep.table.labels,
        sweep.train_masks[k] | sweep.val_masks[k],
        p,
        SIGNS[ops[k]],
      )
      for k in runs
    ]
    stack = lambda xs: jnp.asarray(np.stack(xs))
    inputs = stack([g.inputs for g in grids])
    labels = stack([g.labels for g in grids])
    phase = stack([g.phase for g in grids])
    train_w = stack([sweep.train_masks[k][g.rows].astype(np.float32) for k, g in zip(runs, grids)])
    fn = jax.jit(jax.vmap(make_measure_fn(sweep.model, p)))
    last = params_at(steps[-1])
    embed = np.asarray(last["Embed_0"]["embedding"][:, :p])
    keys = [key_frequencies(np.asarray(freq_norms(e)), max_keys) for e in embed]
    key_mask = stack([np.isin(np.arange(num_frequencies(p)), ks) for ks in keys])

    all_steps = sorted({0, *steps})
    out = []
    for step in all_steps:
      params = last if step == steps[-1] else params_at(step)
      out.append(jax.device_get(fn(params, inputs, labels, train_w, phase, key_mask)))
  values = {name: np.stack([o[name] for o in out]) for name in out[0]}
  return Measures(runs, np.asarray(all_steps), keys, values)


def initial_params(sweep, runs: list[int]):
  """The step-0 parameters of ``runs``, stacked, as ``grokjax.train`` initialises them."""
  from grokjax import train

  def one(seed, scale):
    params = sweep.model.init(train._keys(seed)[0], sweep.table.inputs[:1])["params"]
    return jax.tree.map(lambda x: x * scale, params)

  seeds = jnp.asarray([sweep.runs[k]["seed"] for k in runs])
  scales = jnp.asarray([float(sweep.runs[k].get("init_scale", 1.0)) for k in runs])
  return jax.jit(jax.vmap(one))(seeds, scales)


def _at(steps, step):
  """Index of the first checkpoint at or after ``step`` (the last if none)."""
  return int(min(np.searchsorted(steps, step), len(steps) - 1))


def _first_below(steps, values, level):
  hit = np.flatnonzero(values <= level)
  return int(steps[hit[0]]) if len(hit) else None


def summary(rd: analysis.RunDir, m: Measures) -> list[dict]:
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
    start = r[_at(m.steps, t_train)]
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
          n: key_share(norms[-1], np.argsort(-norms[-1][1:])[:n] + 1) for n in (1, 2, 3, 4, 5, 6)
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


# --- figures -----------------------------------------------------------------------------------

PHASES = (("memorisation", "#fde0c5"), ("circuit formation", "#d6e9f8"), ("clean-up", "#dff0d8"))


def _shade(ax, t_train, t_val, end):
  """The three phases: until train 99%, until val 99%, after."""
  edges = [1, t_train or end, t_val or end, end]
  for (_, color), a, b in zip(PHASES, edges[:-1], edges[1:]):
    if b > a:
      ax.axvspan(a, b, color=color, lw=0)


def spectrum_figure(rd, m: Measures, j: int, s: dict):
  """Embedding and unembedding norm per frequency: at init, at val 99%, at the end."""
  from matplotlib.ticker import MaxNLocator

  from grokjax import plots

  picks = [0, _at(m.steps, s["val_step"] or m.steps[-1]), len(m.steps) - 1]
  fig = plots._figure(11, 5)
  axes = fig.subplots(2, 3, sharex=True, sharey="row")
  keys = set(m.keys[j].tolist())
  for col, c in enumerate(picks):
    for row, name in enumerate(("embed_norms", "unembed_norms")):
      sq = np.square(m.values[name][c, j])
      f = np.arange(len(sq))
      colors = ["#d62728" if k in keys else "#7f7f7f" for k in f]
      ax = axes[row, col]
      ax.bar(f, 100 * sq / sq.sum(), color=colors, width=0.8)
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
      if row == 0:
        label = "init" if m.steps[c] == 0 else f"step {m.steps[c]}"
        if c == picks[1] and s["val_step"]:
          label += " (val ≥ 99%)"
        share = m.values["key_share"][c, j]
        ax.set_title(f"{label}: key freqs hold {100 * share:.0f}%", fontsize=10)
      if col == 0:
        ax.set_ylabel(
          ("token embedding" if row == 0 else "unembedding") + "\n% of norm² per frequency"
        )
      if row == 1:
        ax.set_xlabel("frequency k (0 = constant)")
  fig.suptitle(
    f"Run {s['run']}: Fourier spectrum, key frequencies {s['key_frequencies']} in red",
    fontsize=11,
  )
  return fig


def measures_figure(rd, m: Measures, j: int, s: dict):
  """Accuracy, losses, Gini and weight norm vs steps (log x), phases shaded."""
  from matplotlib.patches import Patch

  from grokjax import plots

  k = m.runs[j]
  keep = rd.metrics["step"] > 0
  t = rd.metrics["step"][keep]
  cs = np.ones(len(m.steps), bool)
  c = np.maximum(m.steps, 1)  # step 0 (init) is drawn at 1
  fig = plots._figure(7.5, 9)
  axes = fig.subplots(4, 1, sharex=True)
  end = int(max(t[-1], c[-1]))
  for ax in axes:
    _shade(ax, s["train_step"], s["val_step"], end)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
  ax = axes[0]
  ax.plot(t, 100 * rd.metrics["train_acc"][keep, k], color=plots.TRAIN, label="train")
  ax.plot(t, 100 * rd.metrics["val_acc"][keep, k], color=plots.VAL, label="validation")
  ax.set_ylabel("accuracy (%)")
  ax.legend(loc="center left", fontsize=8)
  ax = axes[1]
  ax.plot(t, rd.metrics["train_loss"][keep, k], color=plots.TRAIN, lw=1, label="train loss")
  ax.plot(t, rd.metrics["val_loss"][keep, k], color=plots.VAL, lw=1, label="validation loss")
  v = m.values
  ax.plot(c, v["restricted_loss"][cs, j], "k-o", ms=2.5, label="restricted loss (full table)")
  ax.plot(
    c, v["excluded_loss"][cs, j], "-o", color="#9467bd", ms=2.5, label="excluded loss (train)"
  )
  ax.set_yscale("log")
  ax.set_ylabel("cross-entropy")
  ax.legend(loc="lower left", fontsize=8, ncol=2)
  ax = axes[2]
  ax.plot(c, v["gini"][cs, j], "-o", color="#8c564b", ms=2.5, label="Gini of embedding freq norms")
  ax.plot(
    c, v["key_share"][cs, j], "-o", color="#e377c2", ms=2.5, label="key freqs' share of norm²"
  )
  ax.set_ylim(0, 1)
  ax.set_ylabel("embedding sparsity\nin Fourier basis")
  ax.legend(loc="upper left", fontsize=8)
  ax = axes[3]
  ax.plot(c, v["weight_norm_sq"][cs, j], "-o", color=plots.NORM, ms=2.5)
  ax.set_ylabel("total squared\nweight norm")
  ax.set_xlabel("optimisation steps (dots: checkpoints; the first is step 0, drawn at 1)")
  fig.legend(
    [Patch(color=col) for _, col in PHASES],
    [name for name, _ in PHASES],
    loc="outside lower center",
    ncol=3,
    frameon=False,
    fontsize=9,
  )
  keys = ", ".join(map(str, s["key_frequencies"]))
  fig.suptitle(
    f"Run {s['run']}: progress measures (key frequencies {keys}); "
    f"train 99% at {s['train_step']}, val 99% at {s['val_step']}",
    fontsize=10,
  )
  return fig


def circle_coords(embed_PxD, k: int, basis_PxP=None):
  """[p, 2]: the tokens' embeddings projected on the plane spanned by the embedding's
  cos and sin components of frequency k (orthonormalised)."""
  p = embed_PxD.shape[0]
  basis_PxP = fourier_basis(p) if basis_PxP is None else basis_PxP
  plane_2xD = basis_PxP[2 * k - 1 : 2 * k + 1] @ embed_PxD
  q, _ = np.linalg.qr(np.asarray(plane_2xD, np.float64).T)
  return np.asarray(embed_PxD, np.float64) @ q


def circle_figure(rd, m: Measures, j: int, s: dict):
  """Each token's embedding on the (cos, sin) plane of the top key frequency, at init
  and at the end (each on its own parameters' plane), coloured by token."""
  from grokjax import plots

  norms = m.values["embed_norms"][-1, j]
  top = int(m.keys[j][np.argmax(norms[m.keys[j]])])
  p = m.values["embed"].shape[2]
  fig = plots._figure(10, 4.8)
  axes = fig.subplots(1, 2)
  for ax, c in zip(axes, (0, len(m.steps) - 1)):
    xy = circle_coords(m.values["embed"][c, j], top)
    sc = ax.scatter(
      xy[:, 0], xy[:, 1], c=np.arange(p), cmap="twilight", s=40, edgecolor="k", lw=0.3
    )
    for x in range(p):
      ax.annotate(str(x), xy[x], fontsize=6, xytext=(3, 3), textcoords="offset points")
    order = np.argsort((top * np.arange(p)) % p)  # neighbours on the ideal circle
    ring = xy[np.append(order, order[0])]
    ax.plot(ring[:, 0], ring[:, 1], color="#bbbbbb", lw=0.6, zorder=0)
    ax.set_aspect("equal", "datalim")
    label = "init" if m.steps[c] == 0 else f"step {m.steps[c]}"
    ax.set_title(f"{label}: cos/sin plane of k = {top}", fontsize=10)
    ax.set_xlabel(f"along cos(2π·{top}x/{p})")
    ax.set_ylabel(f"along sin(2π·{top}x/{p})")
  fig.colorbar(sc, ax=axes, label="token x", shrink=0.8)
  fig.suptitle(
    f"Run {s['run']}: token embeddings; grey line joins tokens by angle 2π·{top}x/{p}", fontsize=10
  )
  return fig


def write_figures(run_dir, out=None, max_keys: int | None = None) -> list[Path]:
  """Computes the measures of every add/sub run of the sweep in ``run_dir`` and
  writes figures/interp_run<k>_{spectrum,measures,circle}.png and interp.json."""
  rd = analysis.load_run_dir(run_dir)
  if not any(r.get("op") in SIGNS for r in rd.runs):
    check_op(rd.runs[0].get("op"))
  analysis.require_metrics(rd)
  m = compute(run_dir, max_keys)
  summ = summary(rd, m)
  out = Path(out) if out else rd.path / "figures"
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for j, s in enumerate(summ):
    for name, make in zip(FIGURES, (spectrum_figure, measures_figure, circle_figure)):
      path = out / f"interp_run{s['run']}_{name}.png"
      make(rd, m, j, s).savefig(path)
      paths.append(path)
  path = rd.path / "interp.json"
  path.write_text(json.dumps(summ, indent=1))
  return [*paths, path]
