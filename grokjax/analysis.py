"""A sweep's results from its metrics: steps to a threshold, the grokking delay,
medians and spread over seeds, the results table, and the metric log as a tidy table.

Everything here is numpy on the host; nothing imports jax or matplotlib. Functions
that take ``rd`` read its ``path``, ``runs`` and ``metrics`` (a grokjax.rundir.RunDir).
"""

from __future__ import annotations

import csv
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


def summarize(records: list[dict], runs: list[dict], threshold: float = 0.99) -> list[dict]:
  """One summary per run: steps to ``threshold`` train and val accuracy, the
  grokking delay between them, final metrics, and whether the run diverged."""
  return summarize_arrays(as_arrays(records), runs, threshold)


def summarize_arrays(metrics: dict, runs: list[dict], threshold: float = 0.99) -> list[dict]:
  """``summarize`` on metric arrays (``RunDir.metrics``)."""
  m = metrics
  if not m:
    return []
  train_at = first_step(m["step"], m["train_acc"], threshold)
  val_at = first_step(m["step"], m["val_acc"], threshold)
  out = []
  for k, run in enumerate(runs):
    t, v = train_at[k], val_at[k]
    diverged = not all(math.isfinite(x) for x in m["train_loss"][:, k])
    out.append(
      dict(
        index=run["index"],
        train_step=t,
        val_step=v,
        delay=None if t is None or v is None else v - t,
        final_train_acc=float(m["train_acc"][-1, k]),
        final_val_acc=float(m["val_acc"][-1, k]),
        diverged=diverged,
      )
    )
  return out


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


STAT_FIELDS = ("train_step", "val_step", "delay", "final_train_acc", "final_val_acc")


def group_summary(summary: list[dict], runs: list[dict], exclude=SEED_FIELDS) -> list[dict]:
  """Per setting (runs grouped over ``exclude``): the ``spread`` over its seeds of
  the steps to threshold, the delay and the final accuracies."""
  out = []
  for key, members in group_runs(runs, exclude):
    stats = {f: spread([summary[k][f] for k in members]) for f in STAT_FIELDS}
    out.append(dict(setting=key, runs=[runs[k]["index"] for k in members], **stats))
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


def table(summary: list[dict], runs: list[dict], swept: list[str]) -> str:
  """A plain-text table of per-run results, one line per run; then, when a setting
  has several seeds, one line per setting: median (min-max) over its seeds."""
  head = ["run", *swept, "train>=thr", "val>=thr", "delay", "val_acc"]
  rows = []
  for s, r in zip(summary, runs):
    fmt = lambda x: "never" if x is None else str(x)
    val = "diverged" if s["diverged"] else f"{s['final_val_acc']:.3f}"
    rows.append(
      [
        str(r["index"]),
        *(str(r[k]) for k in swept),
        fmt(s["train_step"]),
        fmt(s["val_step"]),
        fmt(s["delay"]),
        val,
      ]
    )
  text = _columns([head, *rows])
  groups = group_summary(summary, runs)
  if summary and max(len(g["runs"]) for g in groups) > 1:
    fields = [f for f in swept if f not in SEED_FIELDS]
    head = [*(fields or ["setting"]), "seeds", "train>=thr", "val>=thr", "delay", "val_acc"]
    rows = [
      [
        *(str(g["setting"][f]) for f in fields or []),
        *([] if fields else ["all"]),
        str(len(g["runs"])),
        *(_fmt_spread(g[f]) for f in ("train_step", "val_step", "delay")),
        _fmt_spread(g["final_val_acc"], 3),
      ]
      for g in groups
    ]
    text += "\n\nmedian (min-max) over seeds; 'never' = not reached\n" + _columns([head, *rows])
  return text


def _columns(lines: list[list[str]]) -> str:
  widths = [max(len(x) for x in col) for col in zip(*lines)]
  return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in lines)


def tidy_rows(rd) -> list[dict]:
  """The metric log as a tidy table: one row per run per evaluation point, holding
  the run's runs.json entry, the step and every metric. Rows go run by run."""
  if not rd.metrics:
    return []
  names = [k for k in rd.metrics if k != "step"]
  steps = rd.metrics["step"].tolist()
  return [
    {**run, "step": step, **{m: float(rd.metrics[m][t, k]) for m in names}}
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
