"""A sweep's results from its metrics: steps to a threshold, the grokking delay,
medians and spread over seeds, the results table, and the metric log as a tidy table.

Everything here is numpy on the host; nothing imports jax or matplotlib (the t-SNE
of ``tsne`` is scikit-learn's, an optional extra). Functions that take ``rd`` read
its ``path``, ``runs`` and ``metrics`` (a grokjax.rundir.RunDir).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import itertools
import json
import math
from pathlib import Path

import numpy as np

from grokjax.errors import UserError

# runs.json fields that tell the repeats of one setting apart; every other field is
# a swept value (op, p, train_frac, lr, weight_decay, ...).
SEED_FIELDS = ("index", "seed", "split_seed")
EXPORT_FORMATS = ("csv", "jsonl")


def require_metrics(rd) -> None:
  """A UserError unless the sweep has logged at least one evaluation."""
  if not rd.metrics:
    raise UserError(f"{rd.path} has no metric records yet; wait for the sweep's first evaluation")


def as_arrays(records: list[dict]) -> dict[str, np.ndarray]:
  """Metric records -> {"step": [T], metric: [T, K]}."""
  if not records:
    return {}
  return {
    k: np.asarray([r[k] for r in records], np.float64 if k != "step" else np.int64)
    for k in records[0]
  }


def first_step(steps: np.ndarray, values_TxK: np.ndarray, threshold: float) -> list:
  """Per run, the first logged step with value >= threshold (None if never)."""
  hit = values_TxK >= threshold
  return [
    int(steps[hit[:, k].argmax()]) if hit[:, k].any() else None for k in range(values_TxK.shape[1])
  ]


@dataclasses.dataclass(frozen=True)
class PhaseRule:
  """How a run's phase is decided (Liu et al. 2022): accuracy ``threshold`` (their
  90%), and ``delay``: the largest gap between train and val reaching it, as a
  fraction of the steps trained, that still counts as comprehension."""

  threshold: float = 0.9
  delay: float = 0.1

  @classmethod
  def of(cls, config: dict | None) -> PhaseRule:
    """The rule of a saved config (config.json's ``phase`` section; defaults if absent)."""
    return cls(**((config or {}).get("phase") or {}))


PHASES = ("comprehension", "grokking", "memorization", "confusion", "diverged")
# A run that reached the phase threshold but whose stable val accuracy ended below
# it: its phase (comprehension or grokking) with this suffix, e.g. "grokking (relapsed)".
RELAPSED = " (relapsed)"


def base_phase(name: str) -> str:
  """One of PHASES: ``name`` without the RELAPSED suffix."""
  return name.removesuffix(RELAPSED)


def phase(
  train_step, val_step, budget: int, diverged: bool, rule: PhaseRule, relapsed: bool = False
) -> str:
  """One run's phase from the first steps its train and val accuracy reached
  ``rule.threshold`` (None: never) within ``budget`` steps: it keeps the phase of
  when it first got there, marked RELAPSED when its stable val accuracy ended below
  the threshold (``relapsed``)."""
  if diverged:
    return "diverged"
  if train_step is None:
    return "confusion"
  if val_step is None:
    return "memorization"
  name = "grokking" if val_step - train_step > rule.delay * budget else "comprehension"
  return name + (RELAPSED if relapsed else "")


def stable(steps_T: np.ndarray, values_T: np.ndarray) -> float:
  """The median over the evaluations in the last 10% of the steps logged (at
  least the last one): a run's accuracy at the end, not the luck of its last
  evaluation falling in a spike. By steps, not by evaluations, so a log-spaced
  schedule does not reach back into the run's middle."""
  steps_T = np.asarray(steps_T)
  return float(np.median(np.asarray(values_T)[steps_T >= 0.9 * steps_T[-1]]))


def relapses(values_T: np.ndarray, threshold: float) -> np.ndarray:
  """Which evaluations come after the first one >= ``threshold`` and are below it
  (NaN, a diverged run, counts as below)."""
  hit = values_T >= threshold
  after = np.arange(len(hit)) > (hit.argmax() if hit.any() else len(hit))
  return after & ~hit


def spikes(values_T: np.ndarray, threshold: float) -> tuple[float | None, int]:
  """(fraction of the evaluations after the first one >= ``threshold`` that are
  below it, number of drops below it after that first one, recovered or not: a run
  that fell for good counts one). The fraction is None before the threshold is
  reached or with no evaluation after it."""
  hit = values_T >= threshold
  if not hit.any():
    return None, 0
  after = hit[hit.argmax() :]
  frac = float((~after[1:]).mean()) if len(after) > 1 else None
  return frac, int((after[:-1] & ~after[1:]).sum())


def summarize(records: list[dict], runs: list[dict], threshold: float = 0.99, rule=None) -> list:
  """``summarize_arrays`` on metric records."""
  return summarize_arrays(as_arrays(records), runs, threshold, rule)


def summarize_arrays(
  metrics: dict, runs: list[dict], threshold: float = 0.99, rule: PhaseRule | None = None
) -> list[dict]:
  """One summary per run (``RunDir.metrics`` arrays): steps to ``threshold`` train
  and val accuracy and the delay between them; the stable accuracies (``final_*``:
  ``stable``, the median over the last 10% of the steps) and the last raw ones
  (``last_*``); how often val fell below the threshold after first reaching it
  (``spike_frac``, ``spikes``: every drop, recovered or not); ``relapsed``: it
  reached the threshold, fell below it, and its stable val accuracy is below it (a
  run that reaches it only at its last evaluations has not relapsed); whether it
  diverged; and its phase by ``rule`` (RELAPSED when it relapsed at the rule's
  threshold) with the steps that decided it
  (``phase_train_step``, ``phase_val_step``, ``phase_budget``)."""
  m, rule = metrics, rule or PhaseRule()
  if not m:
    return []
  steps = m["step"]
  train_at = first_step(steps, m["train_acc"], threshold)
  val_at = first_step(steps, m["val_acc"], threshold)
  phase_train = first_step(steps, m["train_acc"], rule.threshold)
  phase_val = first_step(steps, m["val_acc"], rule.threshold)
  budget = int(steps[-1])
  out = []
  for k, run in enumerate(runs):
    t, v = train_at[k], val_at[k]
    diverged = not all(math.isfinite(x) for x in m["train_loss"][:, k])
    spike_frac, n_spikes = spikes(m["val_acc"][:, k], threshold)
    final_val = stable(steps, m["val_acc"][:, k])
    relapsed = {
      level: bool(relapses(m["val_acc"][:, k], level).any()) and not final_val >= level
      for level in (threshold, rule.threshold)
    }  # fell below after reaching it, and ended below it (NaN: diverged, counts as below)
    out.append(
      dict(
        index=run["index"],
        train_step=t,
        val_step=v,
        delay=None if t is None or v is None else v - t,
        final_train_acc=stable(steps, m["train_acc"][:, k]),
        final_val_acc=final_val,
        last_train_acc=float(m["train_acc"][-1, k]),
        last_val_acc=float(m["val_acc"][-1, k]),
        spike_frac=spike_frac,
        spikes=n_spikes,
        relapsed=relapsed[threshold],
        diverged=diverged,
        phase=phase(
          phase_train[k],
          phase_val[k],
          budget,
          diverged,
          rule,
          relapsed[rule.threshold],
        ),
        phase_train_step=phase_train[k],
        phase_val_step=phase_val[k],
        phase_budget=budget,
      )
    )
  return out


def summary(rd, threshold: float | None = None) -> list[dict]:
  """``summarize_arrays`` of a run directory, by its config's threshold and phase rule."""
  threshold = rd.threshold if threshold is None else threshold
  return summarize_arrays(rd.metrics, rd.runs, threshold, PhaseRule.of(rd.config))


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 0..n-1, tied values sharing their mean rank."""
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  _, inverse = np.unique(x, return_inverse=True)
  return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def correlation(x, y, rank: bool = False) -> float | None:
  """Pearson's correlation of ``x`` and ``y`` over the pairs where both are finite
  (``rank``: Spearman's, Pearson's of their ranks); None with fewer than 3 such
  pairs or when either is constant there."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  if rank:
    x, y = _ranks(x), _ranks(y)
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(np.corrcoef(x, y)[0, 1])


def setting(run: dict, exclude=SEED_FIELDS) -> dict:
  """The run's swept values: its runs.json entry without the ``exclude`` fields."""
  return {k: v for k, v in run.items() if k not in exclude}


def group_runs(runs: list[dict], exclude=SEED_FIELDS) -> list[tuple[dict, list[int]]]:
  """Runs that differ only in ``exclude`` fields (by default: seeds), grouped.

  Returns (setting, run positions) pairs in order of first appearance.
  """
  groups: dict[str, tuple[dict, list[int]]] = {}
  for k, run in enumerate(runs):
    key = setting(run, exclude)
    groups.setdefault(json.dumps(key, sort_keys=True), (key, []))[1].append(k)
  return list(groups.values())


def varying(settings: list[dict]) -> list[str]:
  """Fields that take more than one value over ``settings`` (in first-seen order)."""
  fields = dict.fromkeys(k for s in settings for k in s)
  return [f for f in fields if len({json.dumps(s.get(f)) for s in settings}) > 1]


def spread(values: list) -> dict:
  """Median, min, max of per-seed values where None means 'never reached'.

  A None counts as beyond the budget: the median is None when more than half the
  seeds never got there (None if exactly half, for an even count). ``min`` and
  ``max`` range over the seeds that did; ``reached`` counts them.
  """
  done = [v for v in values if v is not None and not _isnan(v)]
  n = len(values)
  ranked = np.asarray(sorted(done) + [math.inf] * (n - len(done)), np.float64)
  median = float(np.median(ranked)) if n else math.inf
  return dict(
    median=median if math.isfinite(median) else None,
    min=min(done) if done else None,
    max=max(done) if done else None,
    reached=len(done),
    n=n,
  )


def _isnan(v) -> bool:
  return isinstance(v, float) and math.isnan(v)


STAT_FIELDS = (
  "train_step",
  "val_step",
  "delay",
  "final_train_acc",
  "final_val_acc",
  "last_val_acc",
  "spikes",
)


def majority(phases: list[str]) -> tuple[str, float]:
  """The most common of PHASES among a setting's seeds (a relapsed seed counts as
  its ``base_phase``; ties: the earlier in PHASES) and the fraction of seeds in it."""
  phases = [base_phase(ph) for ph in phases]
  top = max(PHASES, key=lambda ph: (phases.count(ph), -PHASES.index(ph)))
  return top, phases.count(top) / len(phases)


def group_summary(summary: list[dict], runs: list[dict], exclude=SEED_FIELDS) -> list[dict]:
  """Per setting (runs grouped over ``exclude``): the ``spread`` over its seeds of
  the steps to threshold, the delay, the stable and last accuracies and the spike
  count; ``relapsed``, how many seeds relapsed; and its phase (the seeds' majority,
  ``phase_agree`` the fraction that agree)."""
  out = []
  for key, members in group_runs(runs, exclude):
    stats = {f: spread([summary[k][f] for k in members]) for f in STAT_FIELDS}
    top, agree = majority([summary[k]["phase"] for k in members])
    out.append(
      dict(
        setting=key,
        runs=[runs[k]["index"] for k in members],
        **stats,
        relapsed=sum(bool(summary[k].get("relapsed")) for k in members),
        phase=top,
        phase_agree=agree,
      )
    )
  return out


def grid_axes(runs: list[dict]) -> tuple[str, str] | None:
  """The two numeric fields a sweep varies apart from seeds (x, y), for a phase
  diagram; None unless there are exactly two."""
  fields = varying([setting(r) for r in runs])
  numeric = lambda f: all(
    isinstance(r.get(f), int | float) and not isinstance(r.get(f), bool) for r in runs
  )
  return tuple(fields) if len(fields) == 2 and all(map(numeric, fields)) else None


def phase_grid(summary: list[dict], runs: list[dict], x: str, y: str) -> dict:
  """The settings of an x-by-y sweep as [len(ys), len(xs)] arrays: the seeds'
  majority ``phase`` (index into PHASES, -1 for a missing cell), the fraction of
  seeds that agree, and the medians of the steps until val reached the phase
  threshold and of the delay after train (NaN if fewer than half the seeds did),
  and how many seeds ``relapsed`` (their phase ends in RELAPSED)."""
  xs = sorted({r[x] for r in runs})
  ys = sorted({r[y] for r in runs})
  shape = (len(ys), len(xs))
  out = dict(
    xs=xs,
    ys=ys,
    phase=np.full(shape, -1),
    agree=np.zeros(shape),
    val_step=np.full(shape, np.nan),
    delay=np.full(shape, np.nan),
    seeds=np.zeros(shape, int),
    relapsed=np.zeros(shape, int),
  )
  cells: dict[tuple, list[int]] = {}
  for k, r in enumerate(runs):
    cells.setdefault((ys.index(r[y]), xs.index(r[x])), []).append(k)
  for cell, members in cells.items():
    top, agree = majority([summary[k]["phase"] for k in members])
    out["phase"][cell], out["agree"][cell], out["seeds"][cell] = (
      PHASES.index(top),
      agree,
      len(members),
    )
    out["relapsed"][cell] = sum(summary[k]["phase"].endswith(RELAPSED) for k in members)
    val = [summary[k]["phase_val_step"] for k in members]
    train = [summary[k]["phase_train_step"] for k in members]
    delay = [None if v is None else v - t for v, t in zip(val, train)]
    for f, values in (("val_step", val), ("delay", delay)):
      median = spread(values)["median"]
      out[f][cell] = np.nan if median is None else median
  return out


def _fmt_spread(s: dict, digits: int | None = None) -> str:
  fmt = lambda x: "never" if x is None else (f"{x:.{digits}f}" if digits else str(int(x)))
  if s["n"] == 1 or not s["reached"]:
    return fmt(s["median"])
  top = s["max"] if s["reached"] == s["n"] else None
  return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(top)})"


def swept(runs: list[dict]) -> list[str]:
  """Run fields that take more than one value: the results table's columns (the
  split seed only where it is swept apart from the seed)."""
  fields = [f for f in runs[0] if f != "index"]
  fields = [f for f in fields if len({json.dumps(r.get(f)) for r in runs}) > 1]
  apart = any(r["split_seed"] != r["seed"] for r in runs)
  return [f for f in fields if f != "split_seed" or apart]


RESULT_COLUMNS = (
  "train>=thr",
  "val>=thr",
  "delay",
  "train_acc",
  "val_acc",
  "last_val",
  "spikes",
  "relapsed",
)


def table(summary: list[dict], runs: list[dict], swept: list[str], rule=None) -> str:
  """A plain-text table of per-run results, one line per run; then, when a setting
  has several seeds, one line per setting: median (min-max) over its seeds.

  ``train_acc``/``val_acc`` are the stable accuracies (median over the last 10% of
  the steps), ``last_val`` the last evaluation's; ``spikes`` counts val's drops
  below the threshold after first reaching it, recovered or not, with the share of
  later evaluations below it; ``relapsed``: reached the threshold, stable val below
  it (per setting: how many seeds); the ``phase`` is decided by ``rule`` (a
  PhaseRule; the default one if None)."""
  fmt = lambda x: "never" if x is None else str(x)
  rows = []
  for s, r in zip(summary, runs):
    spike = str(s["spikes"]) + (f" ({s['spike_frac']:.0%})" if s["spike_frac"] else "")
    accs = ["diverged"] * 3 if s["diverged"] else [f"{s[f]:.3f}" for f in _ACCS]
    steps = [fmt(s[f]) for f in ("train_step", "val_step", "delay")]
    relapsed = "yes" if s.get("relapsed") else "no"
    rows.append(
      [str(r["index"]), *(str(r[k]) for k in swept), *steps, *accs, spike, relapsed, s["phase"]]
    )
  text = _columns([["run", *swept, *RESULT_COLUMNS, "phase"], *rows])
  if summary:
    rule = rule or PhaseRule()
    text += (
      f"\nphase at {100 * rule.threshold:g}% accuracy (phase.threshold): grokking if val got "
      f"there more than {100 * rule.delay:g}% of the {summary[0]['phase_budget']} steps after "
      f"train; '{RELAPSED.strip()}': its stable val accuracy ended below it"
    )
  groups = group_summary(summary, runs)
  if summary and max(len(g["runs"]) for g in groups) > 1:
    fields = [f for f in swept if f not in SEED_FIELDS]
    head = [*(fields or ["setting"]), "seeds", *RESULT_COLUMNS, "phase"]
    rows = [
      [
        *(str(g["setting"][f]) for f in fields or []),
        *([] if fields else ["all"]),
        str(len(g["runs"])),
        *(_fmt_spread(g[f]) for f in ("train_step", "val_step", "delay")),
        *(_fmt_spread(g[f], 3) for f in _ACCS),
        _fmt_spread(g["spikes"]),
        f"{g['relapsed']}/{len(g['runs'])}",
        g["phase"] + ("" if g["phase_agree"] == 1 else f" ({g['phase_agree']:.0%})"),
      ]
      for g in groups
    ]
    text += "\n\nmedian (min-max) over seeds; 'never' = not reached\n" + _columns([head, *rows])
  return text


_ACCS = ("final_train_acc", "final_val_acc", "last_val_acc")


def _columns(lines: list[list[str]]) -> str:
  widths = [max(len(x) for x in col) for col in zip(*lines)]
  return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in lines)


# A run's results (``summary``) that every row of its export repeats.
RUN_RESULTS = (
  "phase",
  "phase_train_step",
  "phase_val_step",
  "final_train_acc",
  "final_val_acc",
  "last_val_acc",
  "spike_frac",
  "spikes",
  "relapsed",
)


def tidy_rows(rd) -> list[dict]:
  """The metric log as a tidy table: one row per run per evaluation point, holding
  the run's runs.json entry, its results (``RUN_RESULTS``: phase, stable and last
  accuracies, spikes, relapsed), the step and every metric. Rows go run by run."""
  if not rd.metrics:
    return []
  names = [k for k in rd.metrics if k != "step"]
  steps = rd.metrics["step"].tolist()
  results = [{f: s[f] for f in RUN_RESULTS} for s in summary(rd)]
  return [
    {**run, **results[k], "step": step, **{m: float(rd.metrics[m][t, k]) for m in names}}
    for k, run in enumerate(rd.runs)
    for t, step in enumerate(steps)
  ]


def export(rd, fmt: str, out=None) -> Path:
  """Writes ``tidy_rows`` as CSV or JSON lines (default RUN_DIR/metrics.<fmt>).

  JSON lines hold one object per row, with null for a non-finite metric (strict
  JSON has no NaN); CSV writes such values as nan/inf.
  """
  if fmt not in EXPORT_FORMATS:
    raise UserError(f"unknown export format {fmt!r}; choose {' or '.join(EXPORT_FORMATS)}")
  require_metrics(rd)
  out = Path(out) if out else rd.path / f"metrics.{fmt}"
  if out.is_dir():
    raise UserError(
      f"--out {out} is a directory; give a file name, e.g. {out / ('metrics.' + fmt)}"
    )
  if not out.parent.is_dir():
    raise UserError(f"cannot write {out}: directory {out.parent} does not exist")
  rows = tidy_rows(rd)
  tmp = out.with_name(out.name + ".tmp")
  try:
    _write_rows(tmp, rows, fmt)
  except OSError as e:
    raise UserError(f"cannot write {out}: {e.strerror}; choose another --out") from None
  tmp.replace(out)
  return out


def _write_rows(tmp: Path, rows: list[dict], fmt: str) -> None:
  with open(tmp, "w", newline="") as f:
    if fmt == "csv":
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
    else:
      for row in rows:
        clean = {
          k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
        }
        f.write(json.dumps(clean, allow_nan=False) + "\n")


# --- t-SNE of the output layer (Power et al. Fig. 3) --------------------------------------------


def require_tsne():
  """scikit-learn's TSNE class, or a UserError naming the extra that installs it."""
  try:
    return importlib.import_module("sklearn.manifold").TSNE
  except ImportError:
    raise UserError(
      "report.embeddings needs scikit-learn for its t-SNE; pip install -e '.[analysis]'"
    ) from None


def tsne(rows_CxD: np.ndarray, seed: int = 0) -> np.ndarray:
  """[C, 2]: scikit-learn's t-SNE of the rows (PCA initialisation, ``seed`` its
  random state; perplexity 30, or (C - 1) / 3 for fewer than 91 rows)."""
  rows = np.asarray(rows_CxD, np.float64)
  perplexity = min(30.0, max((len(rows) - 1) / 3, 1.0))
  model = require_tsne()(2, perplexity=perplexity, init="pca", random_state=seed)
  return model.fit_transform(rows)


def cycle_type(perm) -> tuple[int, ...]:
  """The lengths of a permutation's cycles, longest first: (3, 1, 1) for (0 1 2)."""
  seen, lengths = set(), []
  for start in range(len(perm)):
    n, i = 0, start
    while i not in seen:
      seen.add(i)
      i, n = perm[i], n + 1
    if n:
      lengths.append(n)
  return tuple(sorted(lengths, reverse=True))


def cycle_types(n: int = 5) -> list[tuple[int, ...]]:
  """The cycle type of each permutation of range(n), in itertools order (S5's
  elements: grokjax.data.s5_elements)."""
  return [cycle_type(p) for p in itertools.permutations(range(n))]
