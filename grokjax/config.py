"""The config schema, its validation, and the run grid of a sweep.

``default_config()`` is the schema: every config file starts from it, and a key it
does not know is a typo. A sweep's runs are the product of its ``sweep`` lists.
"""

from __future__ import annotations

import itertools
import json

import ml_collections
import numpy as np

from grokjax import data
from grokjax.errors import UserError

# sweep list -> the run field it sets (and the config value used when the list is empty)
SWEEP_AXES = {
  "ops": ("op", "op"),  # several operations train in one program, in a shared vocabulary
  "variants": ("variant", None),  # named methods side by side (VARIANTS)
  "train_fracs": ("train_frac", None),
  "lr": ("lr", "optim.lr"),
  "weight_decay": ("weight_decay", "optim.weight_decay"),
  "init_scale": ("init_scale", "method.init_scale"),
  "grokfast_alpha": ("grokfast_alpha", "method.grokfast_alpha"),
  "grokfast_lamb": ("grokfast_lamb", "method.grokfast_lamb"),
  "split_seeds": ("split_seed", None),  # empty: each run splits with its own seed
  "seeds": ("seed", None),
}
STRING_AXES = ("ops", "variants")
# Per-run method values every run carries (runs.json), from config.method unless swept.
METHOD_FIELDS = (
  "init_scale",
  "grokfast_alpha",
  "grokfast_lamb",
  "grokfast_ma_lamb",
  "loss",
  "orthograd",
  "decay_to_init",
  "norm_target",
)
GROKFAST_EMA_LAMB, GROKFAST_MA_LAMB = 2.0, 5.0  # the Grokfast paper's defaults
_OFF = dict(grokfast_lamb=0.0, grokfast_ma_lamb=0.0, loss="softmax", orthograd=False)
# A variant overrides a run's values; each is compared with the same op, splits, seeds.
VARIANTS = {
  "baseline": dict(_OFF),
  # Grokfast scales the step by up to 1 + lamb: the baseline with that much more lr.
  "baseline_lr_matched": dict(_OFF, lr_mult=1 + GROKFAST_EMA_LAMB),
  "grokfast_ema": dict(_OFF, grokfast_lamb=GROKFAST_EMA_LAMB),
  "grokfast_ma": dict(_OFF, grokfast_ma_lamb=GROKFAST_MA_LAMB),
  "baseline_wd0": dict(_OFF, weight_decay=0.0),  # what StableMax and ⊥Grad are compared with
  "stablemax": dict(_OFF, loss="stablemax", weight_decay=0.0),
  "orthograd": dict(_OFF, orthograd=True, weight_decay=0.0),
}


def default_config() -> ml_collections.ConfigDict:
  """The paper's setting: div mod 97, 1e5 steps, fractions 0.1..0.9, 3 seeds."""
  c = ml_collections.ConfigDict()
  c.name = "div"  # names the default workdir runs/<name>-<timestamp>
  c.op = "div"
  c.p = 97
  c.steps = 100_000
  c.eval_every = 100
  c.eval_schedule = "linear"  # or "log": eval_points log-spaced steps
  c.eval_points = 200
  c.batch_size = 512  # the cap: each run uses min(batch_size, N_train * batch_frac)
  c.batch_frac = 0.5  # the paper's N_train / 2; 1.0 is full-batch training
  c.eval_batch = 4096  # table rows per evaluation block (memory, not math)
  c.matmul_precision = "default"  # float32 matmuls: "default" (JAX's choice), "high", "highest"
  c.vmap_group = 0  # runs vmapped together, groups one after another; 0: auto (sweep.vmap_group)
  c.eval_float64 = False  # also log float64 losses and the float32 "softmax collapse" fraction
  c.threshold = 0.99  # summary: first step with accuracy >= threshold
  c.interp = False  # after the sweep: progress measures and figures (grokjax.interp)
  c.checkpoint_every = 10_000  # steps between Orbax checkpoints (and one at the end)
  c.checkpoint_keep = 3  # how many checkpoints to keep
  c.model = ml_collections.ConfigDict(
    dict(name="transformer", num_layers=2, width=128, num_heads=4)
  )
  c.optim = ml_collections.ConfigDict(
    # decoupled: AdamW; False: Adam with L2 (torch.optim.Adam's weight_decay, Grokfast's setting)
    dict(lr=1e-3, weight_decay=1.0, b1=0.9, b2=0.98, warmup_steps=10, decoupled=True)
  )
  c.method = ml_collections.ConfigDict(
    dict(
      loss="softmax",  # or "stablemax" (Prieto et al. 2025)
      orthograd=False,  # ⊥Grad: drop each gradient's component along its weights
      grokfast_alpha=0.98,  # Grokfast-EMA filter g + lamb * EMA_alpha(g); off at lamb = 0
      grokfast_lamb=0.0,
      grokfast_window=100,  # Grokfast-MA filter g + ma_lamb * mean(last window g); off at 0
      grokfast_ma_lamb=0.0,
      decay_to_init=False,  # weight decay towards the initial weights instead of zero
      init_scale=1.0,  # multiply the initial parameters by this (Omnigrok's alpha)
      norm_target=0.0,  # > 0: rescale the weights to this total L2 norm after each step
    )
  )
  c.sweep = ml_collections.ConfigDict(
    dict(
      ops=(),  # empty: just `op`
      variants=(),  # names from grokjax.config.VARIANTS; empty: config.method as it is
      init_scale=(),
      grokfast_alpha=(),
      grokfast_lamb=(),
      seeds=(0, 1, 2),
      train_fracs=tuple(round(0.1 * i, 1) for i in range(1, 10)),
      split_seeds=(),
      lr=(),
      weight_decay=(),
    )
  )
  # optional trackers (grokjax.integrations): one wandb run / TensorBoard dir per run
  c.log = ml_collections.ConfigDict(dict(wandb=False, wandb_project="grokking", tensorboard=False))
  return c


def _check_keys(cfg, schema, prefix=""):
  for key in cfg.keys():
    if key not in schema:
      raise UserError(
        f"unknown config key {prefix + key!r}; valid keys here: {', '.join(sorted(schema.keys()))}"
      )
    if isinstance(schema[key], ml_collections.ConfigDict):
      _check_keys(cfg[key], schema[key], prefix + key + ".")


def _get(cfg, key: str):
  """The value at a dotted key, e.g. "optim.lr"."""
  for part in key.split("."):
    cfg = cfg[part]
  return cfg


def axis_values(cfg, name: str) -> tuple:
  """The values a sweep axis takes: its list, else the config value it falls back
  to (SWEEP_AXES), else nothing."""
  _, fallback = SWEEP_AXES[name]
  return tuple(cfg.sweep[name]) or ((_get(cfg, fallback),) if fallback else ())


def _positive_int(cfg, key):
  value = _get(cfg, key)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise UserError(f"{key}={value!r} must be a positive integer; fix it with --config.{key}=N")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field a user can get wrong; returns cfg with canonical names."""
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise UserError(
      f"get_config() returned a {type(cfg).__name__}, not a ConfigDict; "
      "start from grokjax.config.default_config()"
    )
  _check_keys(cfg, default_config())
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.op = data.canonical_op(cfg.op)
  data.num_elements(cfg.op, cfg.p)
  for name in STRING_AXES:  # --config.sweep.ops=add,sub reaches us as one string "add,sub"
    values = cfg.sweep[name]
    values = [values] if isinstance(values, str) else list(values)
    cfg.sweep[name] = tuple(p.strip() for v in values for p in str(v).split(",") if p.strip())
  cfg.sweep.ops = tuple(data.canonical_op(op) for op in cfg.sweep.ops)
  for variant in cfg.sweep.variants:
    if variant not in VARIANTS:
      raise UserError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
  for op in cfg.sweep.ops:
    data.num_elements(op, cfg.p)
  if len(set(cfg.sweep.ops)) < len(cfg.sweep.ops):
    raise UserError(f"sweep.ops lists an operation twice: {', '.join(cfg.sweep.ops)}")
  for key in (
    "steps",
    "eval_every",
    "eval_points",
    "batch_size",
    "eval_batch",
    "checkpoint_every",
    "checkpoint_keep",
    "model.num_layers",
    "model.width",
    "model.num_heads",
  ):
    _positive_int(cfg, key)
  if isinstance(cfg.vmap_group, bool) or not isinstance(cfg.vmap_group, int) or cfg.vmap_group < 0:
    raise UserError(f"vmap_group={cfg.vmap_group!r} must be an integer >= 0 (0: automatic)")
  if cfg.matmul_precision not in ("default", "high", "highest"):
    raise UserError(
      f"matmul_precision={cfg.matmul_precision!r}; choose 'default', 'high' or 'highest'"
    )
  if cfg.eval_schedule not in ("linear", "log"):
    raise UserError(f"eval_schedule={cfg.eval_schedule!r}; choose 'linear' or 'log'")
  if not 0 < cfg.batch_frac <= 1:
    raise UserError(f"batch_frac={cfg.batch_frac!r} must be in (0, 1]; 1.0 is full batch")
  if not 0 < cfg.threshold <= 1:
    raise UserError(f"threshold={cfg.threshold!r} must be in (0, 1]")
  if cfg.optim.warmup_steps < 0:
    raise UserError(f"optim.warmup_steps={cfg.optim.warmup_steps} must be >= 0")
  for name in cfg.sweep.keys():
    if name not in SWEEP_AXES:
      raise UserError(f"unknown sweep axis {name!r}; choose from {', '.join(SWEEP_AXES)}")
    if name in STRING_AXES:
      continue  # checked above
    values = cfg.sweep[name]
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    kind = int if "seeds" in name else float
    for v in values:
      if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
        raise UserError(
          f"sweep.{name} holds {v!r}, not {'an integer' if kind is int else 'a number'}; "
          f"write e.g. --config.sweep.{name}={'0,1,2' if kind is int else '0.3,0.5'}"
        )
    cfg.sweep[name] = tuple(kind(v) for v in values)
  for name in ("seeds", "train_fracs"):
    if not cfg.sweep[name]:
      raise UserError(
        f"sweep.{name} is empty; give at least one value, e.g. --config.sweep.{name}=0.5"
      )
  for f in cfg.sweep.train_fracs:
    data.check_train_frac(f)
  for name in ("seeds", "split_seeds"):
    for s in cfg.sweep[name]:
      if s < 0:
        raise UserError(f"sweep.{name} holds {s!r}; seeds are integers >= 0")
  for name, label, ok, rule in (
    ("lr", "learning rate", lambda v: v > 0, "> 0"),
    ("weight_decay", "weight decay", lambda v: v >= 0, ">= 0"),
    ("init_scale", "init_scale", lambda v: v > 0, "> 0"),
    ("grokfast_alpha", "grokfast_alpha", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("grokfast_lamb", "grokfast_lamb", lambda v: v >= 0, ">= 0"),
  ):
    for v in axis_values(cfg, name):
      if not ok(v):
        raise UserError(f"{label} {v!r} must be {rule}")
  m = cfg.method
  if m.loss not in ("softmax", "stablemax"):
    raise UserError(f"method.loss={m.loss!r}; choose 'softmax' or 'stablemax'")
  _positive_int(cfg, "method.grokfast_window")
  if m.grokfast_ma_lamb < 0 or m.norm_target < 0:
    raise UserError("method.grokfast_ma_lamb and method.norm_target must be >= 0")
  return cfg


def run_grid(cfg: ml_collections.ConfigDict) -> list[dict]:
  """One dict per run: index, op, p and the value of every sweep axis.

  The order is the product of the axes in ``SWEEP_AXES`` order, seeds fastest.
  """
  axes = [(field, axis_values(cfg, name) or (None,)) for name, (field, _) in SWEEP_AXES.items()]
  runs = []
  for i, combo in enumerate(itertools.product(*(v for _, v in axes))):
    run = dict(index=i, p=cfg.p, **{f: v for (f, _), v in zip(axes, combo)})
    if run["split_seed"] is None:
      run["split_seed"] = run["seed"]
    for field in METHOD_FIELDS:
      run.setdefault(field, cfg.method[field])
    if run["variant"] is None:
      del run["variant"]
    else:
      overrides = dict(VARIANTS[run["variant"]])
      run["lr"] *= overrides.pop("lr_mult", 1.0)
      run.update(overrides)
    runs.append(run)
  return runs


def eval_steps(cfg: ml_collections.ConfigDict) -> list[int]:
  """Steps after which every run is evaluated: 0, ..., cfg.steps."""
  if cfg.eval_schedule == "log":
    points = np.geomspace(1, cfg.steps, cfg.eval_points).round().astype(int)
  else:
    points = range(cfg.eval_every, cfg.steps + cfg.eval_every, cfg.eval_every)
  return sorted({0, cfg.steps, *(min(int(s), cfg.steps) for s in points)})


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """config.json over today's defaults, so a sweep saved before a key was added loads."""

  def merge(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      else:
        node[key] = tuple(value) if isinstance(value, list) else value

  cfg = default_config()
  with cfg.unlocked():
    merge(cfg, saved)
  return cfg


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)
