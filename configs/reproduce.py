"""Every headline result, in its own paper's setting: ``configs/reproduce.py:NAME``.

  NAME                 paper, result                                       budget
  power_fig1           Power et al. Fig. 1: x / y mod 97, the long delay  GPU
  power_interventions  Power et al. Fig. 2 (centre): interventions, S5    GPU
  power_embeddings     Power et al. Fig. 3: t-SNE of the output layer     GPU
  power_sharpness      Power et al. appendix: sharpness vs val accuracy   GPU
  grokfast_ema         Lee et al. 2024: Grokfast-EMA vs its baseline      GPU
  grokfast_ma          Lee et al. 2024: Grokfast-MA vs its baseline       GPU
  prieto_stablemax     Prieto et al. 2025: StableMax without weight decay CPU
  prieto_orthograd     Prieto et al. 2025: ⊥Grad without weight decay     CPU
  nanda                Nanda et al. 2023: progress measures               GPU
  liu_phase            Liu et al. 2022: phases over decoder lr x wd       GPU

``NAME_cpu`` is each one's CPU-sized twin: the same model, optimizer and method
settings, only p, steps or seeds shrunk (each says which). The report prints the paper's
result beside the sweep's (``grokjax.papers``); docs/reproductions.md has the measured
rows.
"""

from grokjax import papers
from grokjax.config import default_config
from grokjax.errors import UserError


def _base(name: str, op: str, p: int, steps: int, frac: float, seeds=(0, 1, 2)):
  cfg = default_config()
  cfg.name = f"reproduce-{name}"
  cfg.reproduce = name
  cfg.op, cfg.p, cfg.steps = op, p, steps
  cfg.sweep.train_fracs, cfg.sweep.seeds = (frac,), tuple(seeds)
  cfg.eval_schedule, cfg.eval_points = "log", 300
  cfg.checkpoint_every = max(steps // 10, 1)
  return cfg


def power_fig1(cpu: bool):
  """openai/grok's defaults (weight decay 0, AdamW lr 1e-3, betas 0.9/0.98, warmup 10,
  batch min(512, N/2)); Fig. 1's log axis runs to 1e6 steps. Twin: p = 31, 30k steps,
  2 seeds."""
  cfg = _base("power_fig1", "div", 97, 1_000_000, 0.5)
  cfg.optim.weight_decay = 0.0
  if cpu:
    cfg.p, cfg.steps, cfg.sweep.seeds, cfg.checkpoint_every = 31, 30_000, (0, 1), 10_000
    cfg.eval_points = 120
  return cfg


def _grokfast(name: str, cpu: bool):
  """Grokfast's main.py: x * y mod 97 (y != 0), 50%, batch 512, torch.optim.Adam (an L2
  term) lr 1e-3, betas 0.9/0.98, warmup 10; the baseline without weight decay, the
  filter with its published weight decay, and as controls the baseline with that weight
  decay, with and without lr x (1 + lambda). Twin: p = 31, 6k steps, 2 seeds."""
  cfg = _base(name, "mul_nz", 97, 100_000, 0.5)
  cfg.threshold = 0.95  # Grokfast reports steps to 95% validation accuracy
  cfg.optim.decoupled = False
  cfg.optim.weight_decay = 0.005 if name == "grokfast_ema" else 0.01
  cfg.sweep.variants = ("baseline_wd0", "baseline", "baseline_lr_matched", name)
  if cpu:
    cfg.p, cfg.steps, cfg.sweep.seeds, cfg.eval_points = 31, 6000, (0, 1), 150
  return cfg


def power_embeddings(cpu: bool):
  """The paper's transformer and AdamW (weight decay 1) on S5 and on x + y mod 97, 50%;
  the report draws figures/embeddings.png (t-SNE of the output layer's rows; pip
  install -e '.[analysis]'). Twin: x + y mod 31 and S5 at 3k steps, 1 seed."""
  cfg = _base("power_embeddings", "add", 97, 100_000, 0.5, seeds=(0,))
  cfg.sweep.ops = ("s5", "add")
  cfg.report.embeddings = True
  if cpu:
    cfg.p, cfg.steps, cfg.eval_points, cfg.checkpoint_every = 31, 3000, 60, 3000
  return cfg


def power_sharpness(cpu: bool):
  """Sharpness (openai/grok's measure.py: Keskar's phi) of every checkpoint beside the
  validation accuracy, over train fractions 0.3-0.8 of x + y mod 97 (AdamW, wd 1).
  Twin: p = 31, 2k steps, 1 seed, three fractions."""
  cfg = _base("power_sharpness", "add", 97, 100_000, 0.5, seeds=(0,))
  cfg.sweep.train_fracs = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
  cfg.interp, cfg.measure.sharpness = True, True
  cfg.checkpoint_every, cfg.checkpoint_keep = 5000, 1000
  if cpu:
    cfg.p, cfg.steps, cfg.eval_points = 31, 2000, 60
    cfg.batch_size, cfg.checkpoint_every = 128, 250
    cfg.sweep.train_fracs = (0.3, 0.5, 0.7)
  return cfg


SETTINGS = {
  "power_fig1": power_fig1,
  "power_embeddings": power_embeddings,
  "power_sharpness": power_sharpness,
  "grokfast_ema": lambda cpu: _grokfast("grokfast_ema", cpu),
  "grokfast_ma": lambda cpu: _grokfast("grokfast_ma", cpu),
}


def get_config(arg=None):
  known = ", ".join(f"{n}[_cpu]" for n in SETTINGS)
  if not arg:
    raise UserError(f"name a result: configs/reproduce.py:NAME with NAME one of {known}")
  name, cpu = arg.removesuffix(papers.TWIN), arg.endswith(papers.TWIN)
  if name not in SETTINGS:
    raise UserError(f"unknown result {arg!r}; use configs/reproduce.py:NAME, NAME one of {known}")
  cfg = SETTINGS[name](cpu)
  cfg.reproduce = arg
  if cpu:
    cfg.name += "-cpu"
  return cfg
