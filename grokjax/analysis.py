"""Reading a sweep's metric log: steps to a threshold, grokking delay, final values."""

from __future__ import annotations

import math

import numpy as np


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
  m = as_arrays(records)
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


def table(summary: list[dict], runs: list[dict], swept: list[str]) -> str:
  """A plain-text table of per-run results, one line per run."""
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
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *rows])
