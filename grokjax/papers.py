"""The published results grokjax reproduces: what each paper states, where, and in
which setting, so that a sweep's report puts the paper's number beside its own.

``configs/reproduce.py:NAME`` trains result NAME in its paper's setting and sets
``config.reproduce = NAME``; ``NAME_cpu`` is its CPU-sized twin (same model, optimizer
and method; only p, steps or seeds shrunk), which the report names as such: a twin's
numbers are not the paper's setting, and no verdict is drawn from them.
docs/reproductions.md holds the measured rows.
"""

from __future__ import annotations

import dataclasses

from grokjax import analysis

TWIN = "_cpu"


@dataclasses.dataclass(frozen=True)
class Result:
  """One headline result: the paper, where it states it, its setting, and what it
  reports (words and numbers as published)."""

  paper: str
  where: str
  setting: str
  published: str


RESULTS = {
  "power_fig1": Result(
    "Power et al. 2022",
    "Fig. 1 (left), read off its log-scale step axis",
    "x / y mod 97, 50% of the table, 2-layer width-128 transformer, AdamW lr 1e-3, "
    "weight decay 0 (openai/grok's default), batch 512, up to 1e6 steps",
    "training accuracy near 100% after ~1e3 steps; validation accuracy near 100% only "
    "after ~1e5 steps, about 100x later",
  ),
  "power_interventions": Result(
    "Power et al. 2022",
    "Fig. 2 (centre)",
    "the product in S5, 1e5-step budget, interventions of openai/grok's flags",
    "weight decay improves generalisation the most; dropout, weight noise and update "
    "noise also help; training accuracy reaches 100% within 1e3-1e4 steps for all",
  ),
  "power_embeddings": Result(
    "Power et al. 2022",
    "Fig. 3",
    "t-SNE of the output layer's rows after grokking, S5 and x + y mod 97",
    "S5's rows cluster by the structure of the group (e.g. cosets of a subgroup); the rows "
    "of x + y mod p lie on a circle ordered by the residue",
  ),
  "power_sharpness": Result(
    "Power et al. 2022",
    "Appendix (sharpness, openai/grok's measure.py)",
    "sharpness of the minimum (loss rise under random weight perturbations) against "
    "validation accuracy over runs of different train fractions",
    "flatter minima (lower sharpness) go with better validation accuracy (a negative correlation)",
  ),
  "grokfast_ema": Result(
    "Lee et al. 2024 (Grokfast)",
    "Table 1 (algorithmic data)",
    "x * y mod 97 (y != 0), 50%, batch 512, 2-layer transformer, Adam with L2 weight decay "
    "0.005, Grokfast-EMA alpha 0.98, lambda 2",
    "steps to 95% validation accuracy: 39,890 (baseline) -> 910 with Grokfast-EMA",
  ),
  "grokfast_ma": Result(
    "Lee et al. 2024 (Grokfast)",
    "Table 1 (algorithmic data)",
    "x * y mod 97 (y != 0), 50%, batch 512, 2-layer transformer, Adam with L2 weight decay "
    "0.01, Grokfast-MA window 100, lambda 5",
    "steps to 95% validation accuracy: 39,890 (baseline) -> 790 with Grokfast-MA",
  ),
  "prieto_stablemax": Result(
    "Prieto et al. 2025",
    "Sec. 3-4 and their figures on modular addition (StableMax)",
    "bias-free 2 x 200 ReLU MLP on one-hot inputs, x + y mod 113, 40%, full batch, "
    "Adam lr 0.01, beta2 0.999, eps 1e-25, no weight decay, StableMax in float64",
    "softmax without weight decay reaches softmax collapse and does not generalise; "
    "StableMax generalises without any regularisation",
  ),
  "prieto_orthograd": Result(
    "Prieto et al. 2025",
    "Sec. 5 and their figures on modular addition (⊥Grad)",
    "bias-free 2 x 200 ReLU MLP on one-hot inputs, x + y mod 113, 40%, full batch, "
    "Adam lr 0.01, beta2 0.99, eps 1e-25, no weight decay, ⊥Grad",
    "⊥Grad generalises quickly, without weight decay, where the softmax baseline stalls",
  ),
  "nanda": Result(
    "Nanda et al. 2023",
    "Sec. 5 (phases of training), Fig. 7",
    "1-layer ReLU transformer without LayerNorm, tokens x y =, p = 113, 30%, full batch, "
    "AdamW lr 1e-3, weight decay 1, betas (0.9, 0.98)",
    "memorisation, circuit formation and cleanup: test loss falls sharply only at ~9-13k "
    "epochs, while restricted loss falls earlier; a few key frequencies dominate",
  ),
  "liu_phase": Result(
    "Liu et al. 2022",
    "Sec. 5 (phase diagrams of the decoder's learning rate and weight decay)",
    "modular addition, a transformer whose decoder's lr and weight decay are swept while "
    "the embedding's are fixed",
    "four phases: comprehension, grokking, memorisation, confusion; grokking lies "
    "between comprehension and memorisation",
  ),
}


def lookup(name: str) -> tuple[Result, bool]:
  """The result ``name`` (a ``RESULTS`` key, or one with ``_cpu``) and whether it
  names the CPU twin."""
  twin = name.endswith(TWIN)
  return RESULTS[name.removesuffix(TWIN)], twin


def names() -> tuple[str, ...]:
  """Every value ``config.reproduce`` may take: each result and its twin, or ""."""
  return ("", *RESULTS, *(n + TWIN for n in RESULTS))


def _steps(s: dict) -> str:
  if s["median"] is None:
    return f"not reached by most seeds ({s['reached']}/{s['n']})"
  return f"{s['median']:,.0f} (seeds {s['min']:,.0f}-{s['max']:,.0f}, {s['reached']}/{s['n']})"


def comparison(name: str, summary: list[dict], runs: list[dict], threshold: float) -> str:
  """The paper's result beside this sweep's, per setting (seeds pooled): steps to
  ``threshold`` train and val accuracy, stable and last val accuracy, phase."""
  result, twin = lookup(name)
  lines = [
    f"Reproducing {result.paper}, {result.where}:",
    f"  paper's setting: {result.setting}",
    f"  published: {result.published}",
    "  this sweep"
    + (" (a CPU-sized twin: p, steps or seeds shrunk; not the paper's setting):" if twin else ":"),
  ]
  groups = analysis.group_summary(summary, runs)
  fields = analysis.varying([g["setting"] for g in groups])
  named = [f for f in fields if f in ("op", "train_frac", "variant")]  # a variant names the rest
  fields = named if "variant" in named else fields
  for g in groups:
    label = ", ".join(f"{f}={g['setting'][f]}" for f in fields) or "all runs"
    acc = g["final_val_acc"]["median"]
    lines.append(
      f"    {label}: train {threshold:.0%} at {_steps(g['train_step'])}; "
      f"val {threshold:.0%} at {_steps(g['val_step'])}; stable val acc "
      f"{'n/a' if acc is None else f'{acc:.3f}'}; phase {g['phase']}"
    )
  return "\n".join(lines)
