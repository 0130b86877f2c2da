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

import numpy as np

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
  batch min(512, N/2)); Fig. 1's log axis runs to 1e6 steps. Twin: p = 17, 8k steps,
  2 seeds (about 5 CPU-minutes; too short for the delay at weight decay 0)."""
  cfg = _base("power_fig1", "div", 97, 1_000_000, 0.5)
  cfg.optim.weight_decay = 0.0
  if cpu:
    cfg.p, cfg.steps, cfg.sweep.seeds, cfg.checkpoint_every = 17, 8000, (0, 1), 8000
    cfg.eval_points = 80
  return cfg


def _grokfast(name: str, cpu: bool):
  """Grokfast's main.py: x * y mod 97 (y != 0), 50%, batch 512, torch.optim.Adam (an L2
  term) lr 1e-3, betas 0.9/0.98, warmup 10; the baseline without weight decay, the
  filter with its published weight decay, and as controls the baseline with that weight
  decay, with and without lr x (1 + lambda). Twin: p = 31, 3k steps, 2 seeds."""
  cfg = _base(name, "mul_nz", 97, 100_000, 0.5)
  cfg.threshold = 0.95  # Grokfast reports steps to 95% validation accuracy
  cfg.optim.decoupled = False
  cfg.optim.weight_decay = 0.005 if name == "grokfast_ema" else 0.01
  cfg.sweep.variants = ("baseline_wd0", "baseline", "baseline_lr_matched", name)
  if cpu:
    cfg.p, cfg.steps, cfg.sweep.seeds, cfg.eval_points = 31, 3000, (0, 1), 150
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


def power_interventions(cpu: bool):
  """S5 composition, openai/grok's optimizer defaults (Adam lr 1e-3, no weight decay,
  minibatch 512), each intervention a variant of one sweep: weight decay 1 towards the
  origin or the initialisation, an L2 term, dropout 0.1, weight noise and update noise of
  std 0.01, the cosine lr anneal; train fractions 0.3-0.7, 3 seeds, 1e5 steps. (Full
  batch is another command: add --config.batch_frac=1.0.) The paper names the
  interventions, not all their strengths: dropout 0.1 and the noise scales are ours.
  Twin: train fraction 0.5, 1 seed, 1,500 steps."""
  cfg = _base("power_interventions", "s5", 97, 100_000, 0.5)
  cfg.optim.weight_decay = 0.0
  cfg.sweep.train_fracs = (0.3, 0.4, 0.5, 0.6, 0.7)
  cfg.sweep.variants = (
    "adam",
    "wd1",
    "wd1_to_init",
    "l2",
    "dropout",
    "weight_noise",
    "update_noise",
    "lr_anneal",
  )
  if cpu:
    cfg.steps, cfg.sweep.seeds, cfg.sweep.train_fracs = 1500, (0,), (0.5,)
    cfg.eval_points, cfg.checkpoint_every = 40, 1500
  return cfg


def _prieto(name: str, cpu: bool):
  """Prieto et al.'s code (run_main_experiments.sh, utils.py): a bias-free 2 x 200 ReLU
  MLP (nn.Linear's init) on one-hot x and y, x + y mod 113, 40% of the table, full batch,
  lr 0.01, no weight decay, no warmup. StableMax: AdamW beta2 0.999, eps 1e-25, StableMax
  in float64, 80k steps, beside softmax in float32; ⊥Grad: 300 steps, softmax with and
  without ⊥Grad, and the optimizer their ⊥Grad wrapper really steps with (beta2 0.999,
  eps 1e-8; its command line says 0.99 and 1e-25: docs/models.md). 3 seeds. Twin: 1 seed
  (and 2k of StableMax's 80k steps)."""
  cfg = _base(name, "add", 113, 80_000, 0.4)
  cfg.eval_points = 100
  cfg.model.name, cfg.model.num_layers, cfg.model.width = "mlp", 2, 200
  cfg.model.bias, cfg.model.one_hot, cfg.model.init = False, "x_y", "torch"
  cfg.batch_frac, cfg.batch_size = 1.0, 12769  # full batch
  cfg.optim.lr, cfg.optim.b2, cfg.optim.weight_decay, cfg.optim.warmup_steps = 0.01, 0.999, 0.0, 0
  cfg.eval_float64 = True  # logs the softmax-collapse fraction
  if name == "prieto_stablemax":
    cfg.optim.eps = 1e-25
    cfg.sweep.variants = ("baseline_wd0", "stablemax_f64")
  else:
    cfg.steps, cfg.eval_points = 300, 60
    cfg.sweep.orthograd = (False, True)
  if cpu:
    cfg.sweep.seeds = (0,)
    if name == "prieto_stablemax":
      cfg.steps, cfg.eval_points = 2000, 50
  return cfg


def nanda(cpu: bool):
  """Nanda et al.'s model (1 layer, ReLU, no LayerNorm, tokens x y =, width 128, 4 heads)
  on x + y mod 113, 30% of the table, full batch, AdamW lr 1e-3, weight decay 1, betas
  (0.9, 0.98), warmup 10, the loss in float64, 50k steps (their 50k full-batch epochs), a
  checkpoint every 500 (theirs: 100) and the progress measures at each. Twin: p = 59, 12k
  steps, 1 seed (a few CPU-minutes)."""
  cfg = _base("nanda", "add", 113, 50_000, 0.3)
  cfg.model.name, cfg.model.width, cfg.model.num_heads = "nanda", 128, 4
  cfg.batch_frac, cfg.batch_size = 1.0, 12769  # full batch
  cfg.loss.float64 = True
  cfg.interp, cfg.checkpoint_every, cfg.checkpoint_keep = True, 500, 1000
  if cpu:
    cfg.p, cfg.steps, cfg.sweep.seeds, cfg.checkpoint_every, cfg.eval_points = (
      59,
      12_000,
      (0,),
      500,
      100,
    )
  return cfg


def liu_phase(cpu: bool):
  """Liu et al.'s phase diagram (their grokking-squared notebooks): the decoder's lr
  (1e-4..1e-2, 11 log-spaced) and weight decay (0..10 and 20) swept, the embedding's
  fixed (lr 1e-3, weight decay 0), AdamW with torch's defaults, 1e5 steps, 1 seed. Their
  model is a toy (p = 10, a learned embedding and a tanh MLP decoder) that grokjax does
  not build: this is the analogue on the paper's transformer, x + y mod 97, 50%, the token
  embedding as the representation. Twin: p = 31, a 3 x 3 grid, 2k steps."""
  cfg = _base("liu_phase", "add", 97, 100_000, 0.5, seeds=(0,))
  cfg.optim.embed_lr, cfg.optim.embed_weight_decay = 1e-3, 0.0
  cfg.optim.b2, cfg.optim.warmup_steps = 0.999, 0  # torch's AdamW defaults, no warmup
  cfg.sweep.lr = tuple(float(f"{10**e:.3g}") for e in np.linspace(-4, -2, 11))
  cfg.sweep.weight_decay = (*map(float, range(11)), 20.0)
  cfg.eval_points = 100
  if cpu:
    cfg.p, cfg.steps, cfg.eval_points, cfg.checkpoint_every = 31, 2000, 40, 2000
    cfg.batch_size = 128
    cfg.sweep.lr, cfg.sweep.weight_decay = (1e-4, 1e-3, 1e-2), (0.0, 1.0, 10.0)
  return cfg


SETTINGS = {
  "power_interventions": power_interventions,
  "prieto_stablemax": lambda cpu: _prieto("prieto_stablemax", cpu),
  "prieto_orthograd": lambda cpu: _prieto("prieto_orthograd", cpu),
  "nanda": nanda,
  "liu_phase": liu_phase,
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
