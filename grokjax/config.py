"""The config schema, its validation, and the run grid of a sweep.

Every key is declared once as a ``registry.Key``: the sweep's own keys here, the
methods', optimizers' and models' keys in their registrations. ``default_config()``
is built from those declarations (a key it does not know is a typo), ``validate``
checks every value against them, and each run key is a sweep axis: a sweep's runs
are the product of its ``sweep`` lists.
"""

from __future__ import annotations

import itertools
import json

import ml_collections
import numpy as np

from grokjax import analysis, data, fourier, methods, model, papers, registry  # noqa: F401
from grokjax.errors import UserError
from grokjax.registry import Key

_positive = (lambda v: v > 0, "> 0")
_seed = (lambda v: v >= 0, ">= 0")
# The operation: a config key, and the sweep list sweep.ops (empty: just this one).
OP = Key(
  "op", "div", "operation: " + ", ".join(data.OPS), plural="ops", normalize=data.canonical_op
)
# The sweep's own keys: how long, how often, how big, where the results go.
SWEEP_KEYS = (
  Key("name", "div", "names the default workdir runs/<name>-<timestamp>"),
  OP,
  Key("p", 97, "modulus (a prime for division); S5 ignores it", lambda v: v >= 2, ">= 2"),
  Key("steps", 100_000, "optimisation steps", *_positive),
  Key("eval_every", 100, "steps between evaluations (linear schedule)", *_positive),
  Key(
    "eval_schedule", "linear", "or 'log': eval_points log-spaced steps", choices=("linear", "log")
  ),
  Key("eval_points", 200, "evaluations of the log schedule", *_positive),
  Key(
    "batch_size", 512, "the cap: a run's batch is min(batch_size, N_train * batch_frac)", *_positive
  ),
  Key(
    "batch_frac",
    0.5,
    "the paper's N_train / 2; 1.0 is full batch",
    lambda v: 0 < v <= 1,
    "in (0, 1]",
  ),
  Key("eval_batch", 4096, "table rows per evaluation block (memory, not math)", *_positive),
  Key(
    "matmul_precision",
    "default",
    "float32 matmuls (default: JAX's choice)",
    choices=("default", "high", "highest"),
  ),
  Key(
    "vmap_group",
    0,
    "G > 0: exact mode, every run computed in a vmap group of exactly G runs (padded), so "
    "its numbers do not depend on K, the device count or its neighbours; 0: auto (CPU: exact, "
    "G = 1; accelerator: all runs of a device in one vmap, fastest, last bits change with K)",
    lambda v: v >= 0,
    ">= 0",
  ),
  Key(
    "compute_dtype",
    "float32",
    "dtype of the training forward/backward (matmuls, activations); parameters, optimizer "
    "state and evaluation stay float32",
    choices=("float32", "bfloat16"),
  ),
  Key("eval_float64", False, "also log float64 losses and the softmax-collapse fraction"),
  Key(
    "threshold",
    0.99,
    "summary: first step with accuracy >= threshold",
    lambda v: 0 < v <= 1,
    "in (0, 1]",
  ),
  Key(
    "phase.threshold",
    0.9,
    "phase: accuracy that counts as reached (Liu et al.: 90%)",
    lambda v: 0 < v <= 1,
    "in (0, 1]",
  ),
  Key(
    "phase.delay",
    0.1,
    "phase: grokking if val reaches it later than train by this fraction of the steps",
    lambda v: 0 <= v < 1,
    "in [0, 1)",
  ),
  Key("interp", False, "report the progress measures (grokjax.interp) after the sweep"),
  Key(
    "reproduce",
    "",
    "the published result this sweep reproduces (configs/reproduce.py sets it): the report "
    "prints the paper's number beside the sweep's",
    choices=papers.names,
  ),
  Key(
    "report.embeddings",
    False,
    "report figures/embeddings.png: a t-SNE of the output layer's rows (Power et al. Fig. 3; "
    "pip install -e '.[analysis]')",
  ),
  Key(
    "checkpoint_every", 10_000, "steps between Orbax checkpoints (and one at the end)", *_positive
  ),
  Key("checkpoint_keep", 3, "how many checkpoints to keep", *_positive),
  Key("log.wandb", False, "one wandb run per run (pip install 'grokjax[wandb]')"),
  Key("log.wandb_project", "grokking", "the wandb project"),
  Key("log.tensorboard", False, "TensorBoard events in RUN_DIR/tensorboard/"),
)
# Which optimizer, loss and model a run uses: static, so runs differing here train
# in separate programs.
NAME_KEYS = (
  Key("optim.name", "adamw", "optimizer", choices=lambda: registry.OPTIMIZERS, axis="optimizer"),
  Key("method.loss", "softmax", "loss of the answer token", choices=lambda: registry.LOSSES),
  Key("model.name", "transformer", "model", choices=lambda: registry.MODELS, axis="model"),
)
# The sweep's own axes besides op and the run keys: lists sweep.<plural> of a run
# field, without a config key (an empty list: no variant; split seed = the run's seed).
VARIANT = Key(
  "sweep.variants",
  "",
  "a named setting of a run's fields (VARIANTS)",
  choices=lambda: VARIANTS,
  axis="variant",
  plural="variants",
)
TRAIN_FRAC = Key(
  "sweep.train_fracs",
  0.5,
  "fraction of the table trained on",
  lambda v: 0 < v < 1,
  "in (0, 1)",
  axis="train_frac",
  plural="train_fracs",
)
SPLIT_SEED = Key(
  "sweep.split_seeds",
  0,
  "seed of the train/validation split",
  *_seed,
  axis="split_seed",
  plural="split_seeds",
)
SEED = Key(
  "sweep.seeds",
  0,
  "seed of the initialisation and the batches",
  *_seed,
  axis="seed",
  plural="seeds",
)
REQUIRED = ("seeds", "train_fracs")  # sweep lists that need at least one value
GROKFAST_EMA_LAMB, GROKFAST_MA_LAMB = 2.0, 5.0  # the Grokfast paper's defaults
_OFF = dict(grokfast_lamb=0.0, grokfast_ma_lamb=0.0, loss="softmax", orthograd=False)
# A variant sets a run's fields (a value, or a function of the run's value); each is
# compared with the same op, splits and seeds. Add one with ``register_variant``.
VARIANTS = {
  "baseline": dict(_OFF),
  # Grokfast scales the step by up to 1 + lamb: the baseline with that much more lr.
  "baseline_lr_matched": dict(_OFF, lr=lambda lr: lr * (1 + GROKFAST_EMA_LAMB)),
  "grokfast_ema": dict(_OFF, grokfast_lamb=GROKFAST_EMA_LAMB),
  "grokfast_ma": dict(_OFF, grokfast_ma_lamb=GROKFAST_MA_LAMB),
  "baseline_wd0": dict(_OFF, weight_decay=0.0),  # what StableMax and ⊥Grad are compared with
  "stablemax": dict(_OFF, loss="stablemax", weight_decay=0.0),
  "orthograd": dict(_OFF, orthograd=True, weight_decay=0.0),
  "stablemax_f64": dict(_OFF, loss="stablemax", weight_decay=0.0, float64=True),  # Prieto et al.
  # Power et al.'s Fig. 2 (centre) interventions, each on Adam without weight decay
  # (openai/grok's default); configs/reproduce.py:power_interventions sweeps them.
  "adam": dict(_OFF, weight_decay=0.0),
  "wd1": dict(_OFF, weight_decay=1.0),
  "wd1_to_init": dict(_OFF, weight_decay=1.0, decay_to_init=True),
  "l2": dict(_OFF, weight_decay=1e-3, decoupled=False),
  "dropout": dict(_OFF, weight_decay=0.0, dropout=0.1),
  "weight_noise": dict(_OFF, weight_decay=0.0, weight_noise=0.01),
  "update_noise": dict(_OFF, weight_decay=0.0, update_noise=0.01),
  "lr_anneal": dict(_OFF, weight_decay=0.0, schedule="cosine"),
}


def run_keys() -> list[Key]:
  """The keys every run carries a value of (runs.json), each a sweep axis."""
  keys = registry.keys()
  opt = [k for k in keys if k.path.startswith("optim.")]
  mod = [k for k in keys if k.path.startswith("model.")]
  rest = [k for k in keys if k not in opt and k not in mod]
  return [NAME_KEYS[0], *opt, *rest, NAME_KEYS[1], NAME_KEYS[2], *mod]


def all_keys() -> list[Key]:
  return [*SWEEP_KEYS, *run_keys()]


def grid_keys() -> list[Key]:
  """The keys of every sweep axis, in the run grid's order (seeds fastest)."""
  return [OP, VARIANT, TRAIN_FRAC, *run_keys(), SPLIT_SEED, SEED]


def register_variant(name: str, **fields) -> None:
  """A named setting for ``sweep.variants``: run fields set to a value or to a
  function of the run's value, e.g. ``register_variant("lr_x3", lr=lambda v: 3 * v)``."""
  known = {k.field for k in run_keys()}
  for field in fields:
    if field not in known:
      raise ValueError(f"variant {name!r} sets {field!r}, not a run field: {sorted(known)}")
  VARIANTS[name] = fields


def _set(node: ml_collections.ConfigDict, path: str, value) -> None:
  *parents, leaf = path.split(".")
  for part in parents:
    if part not in node:
      node[part] = ml_collections.ConfigDict()
    node = node[part]
  node[leaf] = value


def _get(cfg, path: str):
  """The value at a dotted key, e.g. "optim.lr"."""
  for part in path.split("."):
    cfg = cfg[part]
  return cfg


def default_config() -> ml_collections.ConfigDict:
  """The paper's setting: div mod 97, 1e5 steps, fractions 0.1..0.9, 3 seeds; every
  registered method off; one ``sweep.<axis>`` list per run key, empty."""
  c = ml_collections.ConfigDict()
  for key in all_keys():
    _set(c, key.path, key.default)
  axes = {k.sweep_list: () for k in grid_keys()}  # empty: the key's config value
  axes.update(seeds=(0, 1, 2), train_fracs=tuple(round(0.1 * i, 1) for i in range(1, 10)))
  c.sweep = ml_collections.ConfigDict(axes)
  return c


def _check_keys(cfg, schema, prefix=""):
  for key in cfg.keys():
    if key not in schema:
      raise UserError(
        f"unknown config key {prefix + key!r}; valid keys here: {', '.join(sorted(schema.keys()))}"
      )
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], ml_collections.ConfigDict):
        raise UserError(f"config key {prefix + key!r} is a section; set its keys, e.g. {key}.x")
      _check_keys(cfg[key], schema[key], prefix + key + ".")


def axis_values(cfg, axis: str) -> tuple:
  """The values the sweep list ``sweep.<axis>`` takes: the list, else its key's
  config value (where the key is a config key: op, the run keys), else nothing."""
  values = tuple(cfg.sweep[axis])
  key = {k.sweep_list: k for k in grid_keys()}.get(axis)
  if values or key is None or key.path.startswith("sweep."):
    return values
  return (_get(cfg, key.path),)


def _as_list(values) -> list:
  return list(values) if isinstance(values, (tuple, list)) else [values]


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every value against its declaration; returns cfg with canonical names."""
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise UserError(
      f"get_config() returned a {type(cfg).__name__}, not a ConfigDict; "
      "start from grokjax.config.default_config()"
    )
  _check_keys(cfg, default_config())
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  for key in all_keys():
    _set(cfg, key.path, key.coerce(_get(cfg, key.path), key.path))
  if cfg.report.embeddings:
    analysis.require_tsne()  # before anything trains
  for key in grid_keys():
    name = key.sweep_list
    values = _as_list(cfg.sweep[name])
    if key.type is str:  # --config.sweep.ops=add,sub reaches us as one string "add,sub"
      values = [p.strip() for v in values for p in str(v).split(",") if p.strip()]
    if not values and name in REQUIRED:
      raise UserError(
        f"sweep.{name} is empty; give at least one value, e.g. --config.sweep.{name}={key.default}"
      )
    cfg.sweep[name] = tuple(key.coerce(v, f"sweep.{name}") for v in values)
  for op in dict.fromkeys((cfg.op, *cfg.sweep.ops)):
    data.num_elements(op, cfg.p)
  for name, values in cfg.sweep.items():
    twice = sorted({repr(v) for v in values if list(values).count(v) > 1})
    if twice:
      raise UserError(
        f"sweep.{name} lists {', '.join(twice)} more than once; each value trains once"
      )
  return cfg


def _axes(cfg) -> list[tuple[str, tuple]]:
  """(run field, values) of every axis, in the run grid's order (seeds fastest)."""
  return [(k.field, axis_values(cfg, k.sweep_list) or (None,)) for k in grid_keys()]


def run_grid(cfg: ml_collections.ConfigDict) -> list[dict]:
  """One dict per run: index, p and its value of every axis and run key, with its
  variant (if any) applied. The order is the product of the axes, seeds fastest."""
  axes = _axes(cfg)
  runs = []
  for i, combo in enumerate(itertools.product(*(v for _, v in axes))):
    run = dict(index=i, p=cfg.p, **{f: v for (f, _), v in zip(axes, combo)})
    if run["split_seed"] is None:
      run["split_seed"] = run["seed"]
    if run["variant"] is None:
      del run["variant"]
    else:
      for field, value in VARIANTS[run["variant"]].items():
        run[field] = value(run[field]) if callable(value) else value
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


def _rows() -> list[tuple[str, str, str, str]]:
  """(key, default, kind, meaning) of every config key, from the declarations."""
  run = {k.path for k in run_keys()}
  rows = []
  for key in all_keys():
    kind = "per-run" if key.per_run else ("static" if key.path in run else "sweep-wide")
    options = key.options()
    rule = f" ({key.rule})" if key.rule else (f" ({', '.join(options)})" if options else "")
    rows.append((key.path, repr(key.default), kind, key.help + rule))
  return rows


def table_markdown() -> str:
  """The config keys as a markdown table: key, default, kind, meaning."""
  lines = ["| key | default | kind | meaning |", "|---|---|---|---|"]
  lines += [f"| `{k}` | `{d}` | {kind} | {m} |" for k, d, kind, m in _rows()]
  return "\n".join(lines)


def help_text() -> str:
  """The config keys for --help: per-run and static keys are also sweep lists."""
  return "\n".join(f"  {k}={d} [{kind}] {m}" for k, d, kind, m in _rows())


if __name__ == "__main__":  # python -m grokjax.config [docs/configs.md]: print or update it
  import re
  import sys

  if len(sys.argv) < 2:
    print(table_markdown())
  else:
    doc = open(sys.argv[1]).read()
    block = re.compile(r"(<!-- config-table -->\n).*?(\n<!-- end config-table)", re.S)
    open(sys.argv[1], "w").write(block.sub(lambda m: m[1] + table_markdown() + m[2], doc))
