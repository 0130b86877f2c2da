"""The paper's figures from a run directory, as matplotlib Figures and PNG files.

``curves`` (Fig. 1 style: accuracy and loss vs steps, one panel per setting),
``steps_to_threshold`` (Fig. 2 style: steps until 99% vs training-data fraction),
``weight_norm``, ``variants`` (methods side by side), ``phase_diagram`` (phases
over two swept axes), ``embeddings`` (Fig. 3: a t-SNE of the output layer) and
the progress-measure figures ``interp_spectrum``, ``interp_measures``,
``interp_circle``; ``write_figures`` and ``write_interp_figures`` save them into
RUN_DIR/figures/.

Figures are built on matplotlib's Agg canvas, never through pyplot, so drawing them
neither opens windows nor keeps figures alive; matplotlib itself is imported when
the first figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from grokjax import analysis, data, fourier, interp, registry
from grokjax.errors import UserError
from grokjax.rundir import RunDir

DPI = 100  # PNG resolution: a 5-panel figure is ~1500 px wide
MAX_COLS = 5  # panels per row before wrapping
MAX_SERIES = 12  # steps_to_threshold's series (settings besides train fraction) at most
TRAIN, VAL, NORM, SEED_ALPHA = "#1f77b4", "#d62728", "#2ca02c", 0.35
SPIKE = "#8b0000"  # val accuracy below the threshold after first reaching it

OP_LABELS = {
  "add": "x + y",
  "sub": "x − y",
  "mul": "x · y",
  "mul_nz": "x · y (y ≠ 0)",
  "div": "x / y",
  "div_odd_sub": "x / y if y odd, else x − y",
  "sq_sum": "x² + y²",
  "quad": "x² + xy + y²",
  "quad_x": "x² + xy + y² + x",
  "cubic": "x³ + xy",
  "cubic2": "x³ + xy² + y",
  "s5": "x ∘ y in S5",
  "s5_conj": "x ∘ y ∘ x⁻¹ in S5",
  "s5_aba": "x ∘ y ∘ x in S5",
}


def op_label(op: str, p=None) -> str:
  """'x + y (mod 31)'; S5 operations carry no modulus."""
  text = OP_LABELS.get(op, op)
  return text if op.startswith("s5") or p is None else f"{text} (mod {p})"


def field_label(field: str, value) -> str:
  """One swept value in words: 'train 50%', 'lr 0.003', ..."""
  if field == "train_frac":
    return f"{100 * value:g}% training data"
  if field == "op":
    return OP_LABELS.get(value, value)
  if field == "lr":
    return f"lr {value:g}"
  if field == "weight_decay":
    return f"weight decay {value:g}"
  return f"{field} {value}"


def sweep_label(rd: RunDir) -> str:
  """The values shared by every run: operation, modulus and optimizer."""
  shared = analysis.setting(rd.runs[0])
  swept = set(analysis.varying([analysis.setting(r) for r in rd.runs]))
  parts = []
  if "op" not in swept:
    parts.append(op_label(shared["op"], None if "p" in swept else shared.get("p")))
  optim = rd.config.get("optim", {})
  name = optim.get("name", "adamw")
  entry = registry.OPTIMIZERS.get(name)
  label = entry.title(optim) if entry else name
  own = {k.field for k in entry.keys} if entry else set(shared) | set(optim)  # its keys only
  if "lr" not in swept and "lr" in shared and "lr" in own:
    label += f" lr {shared['lr']:g}"
  if "weight_decay" not in swept and "weight_decay" in shared and "weight_decay" in own:
    label += f", weight decay {shared['weight_decay']:g}"
  if {"b1", "b2"} <= own and "b1" in optim:
    label += f" (β {optim['b1']:g}/{optim['b2']:g})"
  return ", ".join([*parts, label])


def _panels(rd: RunDir, exclude=analysis.SEED_FIELDS):
  """(title, run positions) of each panel: one per setting other than seeds."""
  groups = analysis.group_runs(rd.runs, exclude)
  settings = [key for key, _ in groups]
  fields = analysis.varying(settings) or [f for f in ("train_frac",) if f in settings[0]]
  return [(", ".join(field_label(f, key[f]) for f in fields), idx) for key, idx in groups]


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _grid(fig, n_panels: int, rows_per_panel: int):
  """Axes [rows_per_panel][panel] wrapped at MAX_COLS panels a row; unused cells
  are removed, so ``fig.axes`` holds exactly rows_per_panel * n_panels axes."""
  cols = min(n_panels, MAX_COLS)
  blocks = -(-n_panels // cols)
  grid = fig.subplots(blocks * rows_per_panel, cols, squeeze=False, sharex=True, sharey="row")
  out = [[None] * n_panels for _ in range(rows_per_panel)]
  for b in range(blocks):
    for c in range(cols):
      i = b * cols + c
      for r in range(rows_per_panel):
        ax = grid[b * rows_per_panel + r, c]
        if i < n_panels:
          out[r][i] = ax
        else:
          fig.delaxes(ax)
  return out, cols, blocks


def _positive_steps(rd: RunDir) -> np.ndarray:
  """Which evaluation points a log axis can show (step >= 1)."""
  analysis.require_metrics(rd)
  keep = rd.metrics["step"] > 0
  if not keep.any():
    raise UserError(f"{rd.path} has logged step 0 only; plot again after the first evaluation")
  return keep


def _seeds_and_median(ax, steps, values_TxK, color, scale=1.0):
  """Each seed as a thin line, their median bold."""
  for k in range(values_TxK.shape[1]):
    ax.plot(steps, scale * values_TxK[:, k], color=color, lw=0.7, alpha=SEED_ALPHA)
  ax.plot(steps, scale * np.median(values_TxK, axis=1), color=color, lw=2)


def _seeds(runs) -> str:
  """'3 seeds' (or '2/3 seeds' when settings differ in their number of seeds)."""
  sizes = sorted({len(idx) for _, idx in analysis.group_runs(runs)})
  return f"{'/'.join(map(str, sizes))} seed{'s' if sizes != [1] else ''}"


def _legend(fig, entries, handles=(), labels=(), ncol=None):
  """A legend under the panels: ``handles`` as drawn, then ``entries`` given as
  (label, Line2D style) pairs; one row when it fits."""
  from matplotlib.lines import Line2D

  fig.legend(
    [*handles, *(Line2D([], [], **style) for _, style in entries)],
    [*labels, *(label for label, _ in entries)],
    loc="outside lower center",
    ncol=ncol or min(len(entries) + len(labels), 5 if fig.get_figwidth() > 7 else 3),
    frameon=False,
    fontsize=9,
  )


def curves(rd: RunDir, threshold: float | None = None):
  """Fig. 1 style: train and val accuracy (top row) and loss (bottom row) vs
  optimisation steps on a log axis, one column per setting; seeds as thin lines,
  their median bold; triangles mark val evaluations below the threshold after a run
  first reached it (spikes), and each title counts the spikes. Returns the Figure."""
  threshold = rd.threshold if threshold is None else threshold
  keep = _positive_steps(rd)
  steps, m = rd.metrics["step"][keep], {k: v[keep] for k, v in rd.metrics.items()}
  panels = _panels(rd)
  width = max(2.9 * min(len(panels), MAX_COLS), 6.4)
  blocks = -(-len(panels) // MAX_COLS)
  fig = _figure(width, 4.6 * blocks + 1.1)
  (acc_axes, loss_axes), cols, _ = _grid(fig, len(panels), 2)
  for i, (title, idx) in enumerate(panels):
    acc, loss = acc_axes[i], loss_axes[i]
    for name, color in (("train", TRAIN), ("val", VAL)):
      _seeds_and_median(acc, steps, m[f"{name}_acc"][:, idx], color, scale=100)
      _seeds_and_median(loss, steps, m[f"{name}_loss"][:, idx], color)
    acc.axhline(100 * threshold, color="0.4", ls=":", lw=0.8)
    n_spikes = 0
    for k in idx:  # val below the threshold after first reaching it: a spike, not a miss
      below = analysis.relapses(m["val_acc"][:, k], threshold)
      if below.any():
        acc.plot(steps[below], 100 * np.nan_to_num(m["val_acc"][below, k]), "v", c=SPIKE, ms=4)
      n_spikes += analysis.spikes(m["val_acc"][:, k], threshold)[1]
    plural = "s" if n_spikes > 1 else ""
    acc.set_title(title + (f"\n{n_spikes} spike{plural}" if n_spikes else ""), fontsize=10)
    acc.set_ylim(-2, 102)
    losses = np.stack([m["train_loss"][:, idx], m["val_loss"][:, idx]])
    if not np.isfinite(losses[:, -1]).any():  # every run of the panel diverged
      for ax in (acc, loss):
        ax.text(0.5, 0.5, "diverged", transform=ax.transAxes, ha="center", color="0.3")
    if ((np.asarray(m["train_loss"]) > 0) & np.isfinite(m["train_loss"])).any():
      loss.set_yscale("log")  # shared by the row; a log axis needs a finite loss somewhere
    loss.set_xlabel("optimisation steps")
    acc.set_xscale("log")
    for ax in (acc, loss):
      ax.grid(True, which="major", color="0.9", lw=0.6)
    if i % cols == 0:
      acc.set_ylabel("accuracy (%)")
      loss.set_ylabel("loss (cross-entropy)")
  fig.suptitle(f"{sweep_label(rd)}\naccuracy and loss vs optimisation steps", fontsize=11)
  _legend(
    fig,
    [
      ("train", dict(color=TRAIN, lw=2)),
      ("validation", dict(color=VAL, lw=2)),
      (f"median of {_seeds(rd.runs)}", dict(color="0.3", lw=2)),
      ("single seed", dict(color="0.5", lw=0.7, alpha=0.6)),
      (f"{100 * threshold:g}% accuracy", dict(color="0.4", ls=":", lw=0.8)),
      (
        f"val < {100 * threshold:g}% after first reaching it",
        dict(color=SPIKE, marker="v", ls="", ms=4),
      ),
    ],
    ncol=3,
  )
  return fig


def weight_norm(rd: RunDir, threshold: float | None = None):
  """The L2 norm of all parameters vs optimisation steps (log axis), one panel per
  setting, with the median steps at which train and val accuracy reached the
  threshold marked. Returns the Figure."""
  threshold = rd.threshold if threshold is None else threshold
  keep = _positive_steps(rd)
  steps, norm = rd.metrics["step"][keep], rd.metrics["param_norm"][keep]
  summary = analysis.summarize_arrays(rd.metrics, rd.runs, threshold)
  panels = _panels(rd)
  width = max(2.9 * min(len(panels), MAX_COLS), 6.4)
  blocks = -(-len(panels) // MAX_COLS)
  fig = _figure(width, 2.6 * blocks + 1.1)
  (axes,), cols, _ = _grid(fig, len(panels), 1)
  drawn = set()  # the threshold lines some panel has: only those go in the legend
  for i, (title, idx) in enumerate(panels):
    ax = axes[i]
    _seeds_and_median(ax, steps, norm[:, idx], NORM)
    for field, color in (("train_step", TRAIN), ("val_step", VAL)):
      at = analysis.spread([summary[k][field] for k in idx])["median"]
      if at:
        ax.axvline(at, color=color, ls="--", lw=1)
        drawn.add(field)
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("optimisation steps")
    ax.grid(True, which="major", color="0.9", lw=0.6)
    if i % cols == 0:
      ax.set_ylabel("parameter norm (L2)")
  fig.suptitle(f"{sweep_label(rd)}\nweight norm vs optimisation steps", fontsize=11)
  _legend(
    fig,
    [
      (f"median of {_seeds(rd.runs)}", dict(color=NORM, lw=2)),
      ("single seed", dict(color=NORM, lw=0.7, alpha=SEED_ALPHA)),
      *(
        (f"{name} ≥ {100 * threshold:g}% (median)", dict(color=color, ls="--", lw=1))
        for field, name, color in (("train_step", "train", TRAIN), ("val_step", "validation", VAL))
        if field in drawn
      ),
    ],
  )
  return fig


def steps_to_threshold(rd: RunDir, threshold: float | None = None):
  """Fig. 2 style: optimisation steps until val (and, faded, train) accuracy
  reaches the threshold vs the training-data fraction, one series per operation
  (and other swept value): median over seeds with min-max bars, log y-axis.
  Settings where a seed never got there get a hollow marker on the 'not reached'
  line, labelled with how many seeds missed. Returns the Figure."""
  threshold = rd.threshold if threshold is None else threshold
  analysis.require_metrics(rd)
  summary = analysis.summarize_arrays(rd.metrics, rd.runs, threshold)
  budget = int(rd.metrics["step"][-1])
  top = budget * 2.5  # the 'not reached' line, above every reachable step
  series = _panels(rd, analysis.SEED_FIELDS + ("train_frac",))
  fig = _figure(6.8, 4.6)
  ax = fig.subplots()
  lowest, fracs_seen = top, set()
  for s, (label, idx) in enumerate(series):
    colors = (f"C{s}", f"C{s}") if len(series) > 1 else (VAL, TRAIN)
    fracs = sorted({rd.runs[k]["train_frac"] for k in idx})
    fracs_seen.update(fracs)
    x = np.asarray([100 * f for f in fracs])
    prefix = f"{label}: " if len(series) > 1 else ""
    for field, name, marker, ls, alpha, color in (
      ("val_step", "validation", "o", "-", 1.0, colors[0]),
      ("train_step", "train", "s", "--", 0.6, colors[1]),
    ):
      stats = [
        analysis.spread([summary[k][field] for k in idx if rd.runs[k]["train_frac"] == f])
        for f in fracs
      ]
      lowest = min([lowest, *(max(st["min"], 1) for st in stats if st["reached"])])
      _threshold_series(
        ax, x, stats, top, color, marker, ls, alpha, f"{prefix}{name} ≥ {100 * threshold:g}%"
      )
  ax.axhline(top, color="0.5", ls=":", lw=0.8)
  ax.set_ylim(10 ** np.floor(np.log10(min(lowest, top / 100))), top * 2.2)  # >= 2 decades
  ax.set_yscale("log")
  ax.set_xticks(sorted(100 * f for f in fracs_seen))
  ax.set_xticklabels([f"{100 * f:g}" for f in sorted(fracs_seen)])
  ax.set_xlim(min(fracs_seen) * 100 - 5, max(fracs_seen) * 100 + 5)
  ax.set_xlabel("training data (% of all equations)")
  ax.set_ylabel("optimisation steps")
  ax.grid(True, which="major", color="0.9", lw=0.6)
  fig.suptitle(
    f"{sweep_label(rd)}\nsteps until accuracy ≥ {100 * threshold:g}% "
    f"(median of {_seeds(rd.runs)}, bars min to max)",
    fontsize=11,
  )
  _not_reached_legend(fig, ax, budget, ncol=2 if len(series) > 1 else None)
  return fig


def _not_reached_legend(fig, ax, budget: int, ncol=None):
  """The axes' series plus the hollow 'not reached' marker, below the panels."""
  handles, labels = ax.get_legend_handles_labels()
  hollow = dict(marker="o", ls="none", mfc="white", mec="0.4", ms=7)
  not_reached = [(f"not reached in {budget:,} steps (seeds missed/seeds)", hollow)]
  _legend(fig, not_reached, handles, labels, ncol=ncol)


def _threshold_series(ax, x, stats, top, color, marker, ls, alpha, label):
  """Medians (filled, joined), min-max bars (up to the 'not reached' line when a
  seed missed) and hollow markers on that line for settings with a miss."""
  median = np.asarray([st["median"] if st["median"] is not None else np.nan for st in stats])
  median = np.maximum(median, 1)  # a log axis: step 0 shows as 1
  lo = np.asarray([max(st["min"], 1) if st["reached"] else np.nan for st in stats])
  hi = np.asarray([st["max"] if st["reached"] == st["n"] else top for st in stats], float)
  hi[np.isnan(lo)] = np.nan
  ax.plot(x, median, marker=marker, ls=ls, color=color, alpha=alpha, label=label, ms=6, lw=1.5)
  ax.vlines(x, lo, hi, color=color, alpha=alpha, lw=1.2)
  ax.plot(x, lo, "_", color=color, alpha=alpha, ms=8)
  ax.plot(x, np.where(hi < top, hi, np.nan), "_", color=color, alpha=alpha, ms=8)
  missed = [i for i, st in enumerate(stats) if st["reached"] < st["n"]]
  if missed:
    ax.plot(x[missed], [top] * len(missed), marker, mfc="white", mec=color, alpha=alpha, ms=8)
    for i in missed:
      ax.annotate(
        f"{stats[i]['n'] - stats[i]['reached']}/{stats[i]['n']}",
        (x[i], top),
        textcoords="offset points",
        xytext=(6, -3 if marker == "o" else 6),
        fontsize=7,
        color=color,
        alpha=max(alpha, 0.7),
      )


def variants(rd: RunDir, threshold: float | None = None):
  """The methods side by side (a sweep over ``sweep.variants``): steps until
  validation accuracy reaches 95% and 99% per variant, median over seeds with
  min-max bars, hollow markers where seeds never got there. Returns the Figure."""
  del threshold  # both 95% and 99% are drawn
  analysis.require_metrics(rd)
  names = list(dict.fromkeys(r["variant"] for r in rd.runs))
  budget = int(rd.metrics["step"][-1])
  top = budget * 2.5
  fig = _figure(1.1 * len(names) + 3.0, 4.8)
  ax = fig.subplots()
  x = np.arange(len(names), dtype=float)
  for thr, color, marker, shift in ((0.95, "C0", "o", -0.1), (0.99, VAL, "D", 0.1)):
    summary = analysis.summarize_arrays(rd.metrics, rd.runs, thr)
    stats = [
      analysis.spread([s["val_step"] for s, r in zip(summary, rd.runs) if r["variant"] == n])
      for n in names
    ]
    _threshold_series(
      ax, x + shift, stats, top, color, marker, "none", 1.0, f"validation ≥ {100 * thr:g}%"
    )
  ax.axhline(top, color="0.5", ls=":", lw=0.8)
  ax.set_yscale("log")
  ax.set_ylim(top / 1e3, top * 2.2)
  ax.set_xticks(x)
  ax.set_xticklabels([n.replace("_", "\n", 1) for n in names], fontsize=9)
  ax.set_xlim(-0.6, len(names) - 0.4)
  ax.set_ylabel("optimisation steps")
  ax.grid(True, axis="y", which="major", color="0.9", lw=0.6)
  fig.suptitle(
    f"{sweep_label(rd)}\nsteps until validation accuracy ≥ 95% / 99% per method "
    f"(median of {_seeds(rd.runs)}, bars min to max)",
    fontsize=11,
  )
  _not_reached_legend(fig, ax, budget)
  return fig


# --- progress measures (grokjax.interp) ---------------------------------------------------------

PHASES = (("memorisation", "#fde0c5"), ("circuit formation", "#d6e9f8"), ("clean-up", "#dff0d8"))


def _shade(ax, t_train, t_val, end):
  """The three phases: until train 99%, until val 99%, after."""
  edges = [1, t_train or end, t_val or end, end]
  for (_, color), a, b in zip(PHASES, edges[:-1], edges[1:]):
    if b > a:
      ax.axvspan(a, b, color=color, lw=0)


def interp_spectrum(rd, m, j: int, s: dict):
  """Embedding and unembedding norm per frequency: at init, at val 99%, at the end."""
  from matplotlib.ticker import MaxNLocator

  picks = [0, interp.checkpoint_at(m.steps, s["val_step"] or m.steps[-1]), len(m.steps) - 1]
  fig = _figure(11, 5)
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


# The built-in measures the first four panels of ``interp_measures`` draw by name.
DRAWN_MEASURES = (
  "restricted_loss",
  "excluded_loss",
  "gini",
  "gini_wl",
  "key_share",
  "weight_norm_sq",
)


def interp_measures(rd, m, j: int, s: dict):
  """Accuracy, losses, Gini and weight norm vs steps (log x), phases shaded; then
  one panel per other registered measure the run has (``interp.measure_names``:
  sharpness, a user's own), labelled by its name and ``help``."""
  from matplotlib.patches import Patch

  k = m.runs[j]
  keep = rd.metrics["step"] > 0
  t = rd.metrics["step"][keep]
  c = np.maximum(m.steps, 1)  # step 0 (init) is drawn at 1
  others = [n for n in interp.measure_names(m, j) if n not in DRAWN_MEASURES]
  fig = _figure(7.5, 9 + 1.9 * len(others))
  axes = fig.subplots(4 + len(others), 1, sharex=True)
  end = int(max(t[-1], c[-1]))
  for ax in axes:
    _shade(ax, s["train_step"], s["val_step"], end)
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
  ax = axes[0]
  ax.plot(t, 100 * rd.metrics["train_acc"][keep, k], color=TRAIN, label="train")
  ax.plot(t, 100 * rd.metrics["val_acc"][keep, k], color=VAL, label="validation")
  ax.set_ylabel("accuracy (%)")
  ax.legend(loc="center left", fontsize=8)
  ax = axes[1]
  ax.plot(t, rd.metrics["train_loss"][keep, k], color=TRAIN, lw=1, label="train loss")
  ax.plot(t, rd.metrics["val_loss"][keep, k], color=VAL, lw=1, label="validation loss")
  v = m.values
  ax.plot(c, v["restricted_loss"][:, j], "k-o", ms=2.5, label="restricted loss (all pairs)")
  ax.plot(
    c,
    v["excluded_loss"][:, j],
    "-o",
    color="#9467bd",
    ms=2.5,
    label="excluded loss (training pairs)",
  )
  ax.set_yscale("log")
  ax.set_ylabel("cross-entropy")
  ax.legend(loc="lower left", fontsize=8, ncol=2)
  ax = axes[2]
  ax.plot(c, v["gini"][:, j], "-o", color="#8c564b", ms=2.5, label="Gini of W_E's Fourier norms")
  ax.plot(c, v["gini_wl"][:, j], "-o", color="#17becf", ms=2.5, label="Gini of W_L's Fourier norms")
  ax.plot(c, v["key_share"][:, j], "-o", color="#e377c2", ms=2.5, label="key freqs' share of norm²")
  ax.set_ylim(0, 1)
  ax.set_ylabel("sparsity in the\nFourier basis")
  ax.legend(loc="upper left", fontsize=8)
  ax = axes[3]
  ax.plot(c, v["weight_norm_sq"][:, j], "-o", color=NORM, ms=2.5)
  ax.set_ylabel("total squared\nweight norm")
  for ax, name in zip(axes[4:], others):
    corr = s.get("val_acc_correlation", {}).get(name, {}).get("spearman")
    label = registry.MEASURES[name].help or name
    if corr is not None:
      label += f" (Spearman with val acc {corr:+.2f})"
    ax.plot(c, v[name][:, j], "-o", color="#bcbd22", ms=2.5, label=label)
    ax.set_ylabel(name)
    ax.legend(loc="upper left", fontsize=8)
  axes[-1].set_xlabel("optimisation steps (dots: checkpoints; the first is step 0, drawn at 1)")
  fig.legend(
    [Patch(color=col) for _, col in PHASES],
    [name for name, _ in PHASES],
    loc="outside lower center",
    ncol=3,
    frameon=False,
    fontsize=9,
  )
  keys = ", ".join(map(str, s["key_frequencies"]))
  thr = f"{100 * rd.threshold:g}%"
  at = lambda step: f"at step {step}" if step is not None else "never"
  fig.suptitle(
    f"Run {s['run']}: progress measures (key frequencies {keys}); "
    f"train {thr} {at(s['train_step'])}, val {thr} {at(s['val_step'])}",
    fontsize=10,
  )
  return fig


def interp_circle(rd, m, j: int, s: dict):
  """Each token's embedding on the (cos, sin) plane of the top key frequency, at init
  and at the end (each on its own parameters' plane), coloured by token."""
  norms = m.values["embed_norms"][-1, j]
  top = int(m.keys[j][np.argmax(norms[m.keys[j]])])
  p = m.values["embed"].shape[2]
  fig = _figure(10, 4.8)
  axes = fig.subplots(1, 2)
  for ax, c in zip(axes, (0, len(m.steps) - 1)):
    xy = fourier.circle_coords(m.values["embed"][c, j], top)
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


def embeddings(rd: RunDir, threshold: float | None = None):
  """Power et al. Fig. 3: a t-SNE (scikit-learn, ``analysis.tsne``) of the output
  layer's rows, one point per answer class, for each setting's first seed at the
  last checkpoint. x ± y mod p and the other modular ops: coloured by the class
  (a cyclic map, so the circle of x + y shows) and numbered; S5: coloured by the
  permutation's cycle type (its conjugacy class; the sign is in the legend).
  ``threshold`` is unused. Returns the Figure."""
  from matplotlib.lines import Line2D

  del threshold
  analysis.require_tsne()
  steps = rd.steps()
  if not steps:
    raise UserError(f"{rd.path} has no checkpoints; the embeddings figure draws the last one's")
  sw = rd.sweep()
  params = rd.params(steps[-1], sw)
  panels = [(title, idx[0]) for title, idx in _panels(rd)]
  cols = min(len(panels), MAX_COLS)
  rows = -(-len(panels) // cols)
  fig = _figure(max(4.6 * cols, 6.4), 4.4 * rows + 0.9)
  grid = fig.subplots(rows, cols, squeeze=False)
  for ax in grid.flat[len(panels) :]:
    fig.delaxes(ax)
  for ax, (title, k) in zip(grid.flat, panels):
    run = rd.runs[k]
    n = data.num_elements(run["op"], run["p"])
    rows_CxD = fourier.output_rows(sw.model(k), params[k], sw.table.inputs[:1])[:n]
    xy = analysis.tsne(rows_CxD)
    if run["op"].startswith("s5"):
      types = analysis.cycle_types(5)
      kinds = sorted(set(types), reverse=True)
      colors = [f"C{kinds.index(t)}" for t in types]
      ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=28, edgecolor="k", lw=0.3)
      parity = lambda t: "even" if (5 - len(t)) % 2 == 0 else "odd"
      ax.legend(
        [Line2D([], [], color=f"C{i}", marker="o", ls="") for i in range(len(kinds))],
        [f"{'+'.join(map(str, t))} ({parity(t)})" for t in kinds],
        title="cycle type",
        fontsize=7,
        title_fontsize=8,
        loc="best",
      )
    else:
      sc = ax.scatter(
        xy[:, 0], xy[:, 1], c=np.arange(n), cmap="twilight", s=36, edgecolor="k", lw=0.3
      )
      if n <= 61:
        for c in range(n):
          ax.annotate(str(c), xy[c], fontsize=6, xytext=(3, 3), textcoords="offset points")
      fig.colorbar(sc, ax=ax, label="answer class", shrink=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    label = op_label(run["op"], run["p"])
    ax.set_title(f"{title}\n{label}, run {run['index']}" if title else label, fontsize=10)
  fig.suptitle(
    f"{sweep_label(rd)}\nt-SNE of the output layer's rows (one point per answer), step {steps[-1]}",
    fontsize=11,
  )
  return fig


PHASE_COLORS = {
  "comprehension": "#2ca02c",
  "grokking": "#1f77b4",
  "memorization": "#ff7f0e",
  "confusion": "#bbbbbb",
  "diverged": "#333333",
}


def _edges(values: list) -> tuple[np.ndarray, bool]:
  """Cell edges around sorted axis values, and whether the axis is logarithmic:
  positive values whose log-steps are more even than their steps (two values: a
  ratio of 10 or more)."""
  v = np.asarray(values, float)
  unevenness = lambda d: np.ptp(d) / np.mean(d)
  log = bool(
    len(v) > 1
    and (v > 0).all()
    and (
      v[-1] / v[0] >= 10 if len(v) == 2 else unevenness(np.diff(np.log(v))) < unevenness(np.diff(v))
    )
  )
  u = np.log(v) if log else v
  step = np.diff(u) if len(u) > 1 else np.ones(1)
  mid = (u[:-1] + u[1:]) / 2
  edges = np.concatenate([[u[0] - step[0] / 2], mid, [u[-1] + step[-1] / 2]])
  return (np.exp(edges) if log else edges), log


def phase_diagram(rd: RunDir, threshold: float | None = None):
  """Liu et al.'s phase diagram over the sweep's two swept axes: one cell per
  setting coloured by its phase (the majority over seeds; hatched, with the share
  that agrees, where seeds disagree; a note where seeds relapsed), and beside it
  heat maps of log10 steps until val accuracy reached the phase threshold and of
  the grokking delay (median over seeds; grey: fewer than half got there).
  ``threshold`` is unused: the phase rule's (config ``phase.threshold``) decides
  all three. Returns the Figure."""
  from matplotlib.colors import ListedColormap
  from matplotlib.patches import Patch

  del threshold
  analysis.require_metrics(rd)
  axes_ = analysis.grid_axes(rd.runs)
  if axes_ is None:
    raise UserError(
      "a phase diagram needs a sweep over exactly two numeric axes besides seeds (e.g. "
      "sweep.lr x sweep.weight_decay); this one varies "
      + (", ".join(analysis.varying([analysis.setting(r) for r in rd.runs])) or "nothing")
    )
  x, y = axes_
  rule = analysis.PhaseRule.of(rd.config)
  g = analysis.phase_grid(analysis.summary(rd), rd.runs, x, y)
  (xe, xlog), (ye, ylog) = _edges(g["xs"]), _edges(g["ys"])
  fig = _figure(15, 4.6)
  axes = fig.subplots(1, 3)
  phases = list(PHASE_COLORS)
  cmap = ListedColormap(list(PHASE_COLORS.values())).with_extremes(under="white")
  axes[0].pcolormesh(xe, ye, g["phase"], cmap=cmap, vmin=0, vmax=len(phases), edgecolors="w")
  centre = lambda e, log: np.sqrt(e[:-1] * e[1:]) if log else (e[:-1] + e[1:]) / 2
  xc, yc = centre(xe, xlog), centre(ye, ylog)
  several = len(analysis.group_runs(rd.runs)) < len(rd.runs)
  for (i, j), agree in np.ndenumerate(g["agree"]):
    if 0 < agree < 1:  # the seeds disagree: hatched, with the majority's share
      axes[0].fill_between(
        xe[j : j + 2], ye[i], ye[i + 1], hatch="///", facecolor="none", edgecolor="w", lw=0
      )
      axes[0].text(xc[j], yc[i], f"{agree:.0%}", ha="center", va="center", fontsize=8)
  for (i, j), n in np.ndenumerate(g["relapsed"]):
    if n:  # seeds that reached the phase threshold and ended below it
      label = f"relapsed {n}/{g['seeds'][i, j]}" if several else "relapsed"
      axes[0].text(xc[j], yc[i], "\n\n" + label, ha="center", va="center", fontsize=7)
  axes[0].set_title(f"phase (majority of {_seeds(rd.runs)})" if several else "phase", fontsize=10)
  thr = f"{100 * rule.threshold:g}%"
  for ax, field, title in (
    (axes[1], "val_step", f"log10 steps until val ≥ {thr}"),
    (axes[2], "delay", f"log10 grokking delay (val − train, ≥ {thr})"),
  ):
    values = np.log10(np.maximum(g[field], 1))
    mesh = ax.pcolormesh(
      xe, ye, np.ma.masked_invalid(values), cmap="viridis", edgecolors="w", linewidth=0.5
    )
    ax.set_facecolor("#dddddd")
    fig.colorbar(mesh, ax=ax, shrink=0.85)
    ax.set_title(
      title
      + ("\n(grey: fewer than half the seeds got there)" if several else "\n(grey: not reached)"),
      fontsize=9,
    )
  for ax in axes:
    ax.set_xscale("log" if xlog else "linear")
    ax.set_yscale("log" if ylog else "linear")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
  fig.legend(
    [Patch(color=c) for c in PHASE_COLORS.values()],
    phases,
    loc="outside lower center",
    ncol=len(phases),
    frameon=False,
    fontsize=9,
  )
  fig.suptitle(
    f"{sweep_label(rd)}: phases over {x} × {y}, {int(rd.metrics['step'][-1])} steps "
    f"(reached: accuracy ≥ {thr}; grokking: val more than "
    f"{100 * rule.delay:g}% of the steps after train)",
    fontsize=10,
  )
  return fig


INTERP_FIGURES = {"spectrum": interp_spectrum, "measures": interp_measures, "circle": interp_circle}
FIGURES = {"curves": curves, "steps_to_threshold": steps_to_threshold, "weight_norm": weight_norm}


def write_figures(rd, out=None, threshold: float | None = None) -> list[Path]:
  """Draws every figure of the run directory ``rd`` (grokjax.rundir.RunDir) into
  ``out`` (default RUN_DIR/figures/) as PNG: ``FIGURES`` (steps to threshold only
  with at most MAX_SERIES series), the methods side by side when the sweep has
  variants, the phase diagram when it varies two numbers, and the t-SNE of the
  output layer (``embeddings``) when the config sets ``report.embeddings``;
  returns the paths written."""
  if threshold is not None and not 0 < threshold <= 1:
    raise UserError(f"threshold {threshold!r} must be in (0, 1], e.g. 0.99")
  _positive_steps(rd)  # something to draw, before any folder is made
  out = _out_dir(rd, out)
  figures = dict(FIGURES)
  if len(_panels(rd, analysis.SEED_FIELDS + ("train_frac",))) > MAX_SERIES:
    del figures["steps_to_threshold"]  # unreadable; a grid's phase diagram says it better
  if any("variant" in r for r in rd.runs):
    figures["variants"] = variants
  if analysis.grid_axes(rd.runs):
    figures["phase"] = phase_diagram
  if (rd.config.get("report") or {}).get("embeddings"):
    figures["embeddings"] = embeddings
  paths = []
  for name, draw in figures.items():
    path = out / f"{name}.png"
    draw(rd, threshold).savefig(path, dpi=DPI)
    paths.append(path)
  return paths


def write_interp_figures(rd, m, summary: list[dict], out=None) -> list[Path]:
  """interp_run<k>_{spectrum,measures,circle}.png of every measured run (grokjax.interp)."""
  out = _out_dir(rd, out)
  paths = []
  for j, s in enumerate(summary):
    for name, draw in INTERP_FIGURES.items():
      path = out / f"interp_run{s['run']}_{name}.png"
      draw(rd, m, j, s).savefig(path)
      paths.append(path)
  return paths


def _out_dir(rd, out) -> Path:
  out = Path(out) if out else rd.path / "figures"
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {out} is a file; give a directory for the figures")
  out.mkdir(parents=True, exist_ok=True)
  return out
