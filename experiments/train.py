"""Train ONE run with flat flags, no config file.

  python experiments/train.py [RUNS_DIR] [--op=div] [--p=97] [--train_frac=0.5] [--lr=1e-3]
      [--weight_decay=1] [--seed=0] [--steps=100000 | --epochs=E] [--workdir=DIR] ...

The flags fill in grokjax.config.default_config() (the paper's settings) as a sweep of
one run: sweep.seeds=(seed,), sweep.train_fracs=(train_frac,). grokjax.sweep.run_sweep
trains it, the same code as experiments/sweep.py, so the outputs are those of any sweep:
config.json, runs.json, splits.npz, metrics.msgpack, checkpoints/, figures/, summary.json.
A run started again in its run directory resumes from its last checkpoint.

'-' and '_' are the same in flag names (--train-frac is --train_frac). The spellings of
the TensorFlow reproduction (RUNS_DIR, --dataset, --learning-rate, --epochs,
--steps-per-execution) and of TAUgrok (--operation, --optim_steps, --save-models,
--save-metrics) work too; docs/coming_from.md maps every one. Giving two spellings of a
flag with different values is an error.

Run directory: --workdir=DIR if given; else RUNS_DIR/<YYYYmmdd-HHMMSS> when a RUNS_DIR
is given (as the TF reproduction did); else runs/<name>, where <name> is TAUgrok's
{op}_lr_{lr}_seed_{seed}_optim_steps_{steps}. Each of p, train_frac, weight_decay,
batch_size, model that is not at its default adds _<flag>_<value>. So two different runs
get different directories, and the same command again resumes its own.
"""

import json
import re
import sys
import time
from pathlib import Path

from absl import flags

from grokjax import analysis, cli, data, integrations, plan, registry, report, rundir, sweep
from grokjax import config as config_lib
from grokjax.errors import UserError

D = config_lib.default_config()
TRAIN_FRAC = 0.5  # the paper's main setting (a sweep's default is 0.1, ..., 0.9)
MIN_EVALS = 20  # evaluations of a run without --eval_every, however short
OPS_HELP = (
  f"{', '.join(data.OPS)}; aliases {', '.join(f'{a}={o}' for a, o in data.ALIASES.items())}"
)

_OP = flags.DEFINE_string("op", D.op, f"Operation: {OPS_HELP}.")
_OPERATION = flags.DEFINE_string(
  "operation", None, "Alias of --op (TAUgrok). Default: unset, --op decides."
)
_DATASET = flags.DEFINE_string(
  "dataset", None, "Alias of --op (TF reproduction). Default: unset, --op decides."
)
_P = flags.DEFINE_integer(
  "p", D.p, "Modulus (a prime for div, div_odd_sub); ignored by the s5 ops.", lower_bound=2
)
_TRAIN_FRAC = flags.DEFINE_float(
  "train_frac", TRAIN_FRAC, "Fraction of the table used for training, in (0, 1)."
)
_MODEL = flags.DEFINE_string(
  "model",
  D.model.name,
  "Model: "
  + "; ".join(f"{name} ({m.help})" for name, m in registry.MODELS.items())
  + ". Paper defaults: 2 layers, width 128, 4 heads.",
)
_LR = flags.DEFINE_float("lr", D.optim.lr, "AdamW learning rate, > 0.")
_LEARNING_RATE = flags.DEFINE_float(
  "learning_rate", None, "Alias of --lr (TF reproduction). Default: unset, --lr decides."
)
_WEIGHT_DECAY = flags.DEFINE_float(
  "weight_decay", D.optim.weight_decay, "AdamW weight decay, >= 0.", lower_bound=0
)
_SEED = flags.DEFINE_integer(
  "seed", D.sweep.seeds[0], "Seed of the model init, the batch order and the split.", lower_bound=0
)
_STEPS = flags.DEFINE_integer("steps", D.steps, "Optimisation steps.", lower_bound=1)
_OPTIM_STEPS = flags.DEFINE_integer(
  "optim_steps", None, "Alias of --steps (TAUgrok). Default: unset, --steps decides.", lower_bound=1
)
_EPOCHS = flags.DEFINE_integer(
  "epochs",
  None,
  "Train for this many epochs instead of --steps: steps = epochs x steps per epoch, "
  "N_train // batch (batch: min(batch_size, N_train // 2)). With --epochs, the defaults "
  "follow the TF reproduction: evaluation every epoch (--eval_every), a checkpoint every 10 "
  "epochs (--checkpoint_every), all of them kept (--checkpoint_keep). "
  "Default: unset, --steps decides.",
  lower_bound=1,
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size",
  D.batch_size,
  "Batch size cap: the run trains with min(batch_size, N_train // 2).",
  lower_bound=1,
)
_EVAL_EVERY = flags.DEFINE_integer(
  "eval_every",
  D.eval_every,
  "Evaluate on the full train and val sets every N steps (and at step 0 and the end); "
  "the device runs N steps per call in between. Default: 100, or steps / 20 for a run of "
  "fewer than 2,000 steps (20 points to draw).",
  lower_bound=1,
)
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
  "steps_per_execution",
  None,
  "Alias of --eval_every (TF reproduction): steps per device call, then one evaluation. "
  "Default: unset, --eval_every decides.",
  lower_bound=1,
)
_CHECKPOINT_EVERY = flags.DEFINE_integer(
  "checkpoint_every",
  D.checkpoint_every,
  "Orbax checkpoint in RUN_DIR/checkpoints/ at the first evaluation at or after every "
  "multiple of N steps, and at the end.",
  lower_bound=1,
)
_CHECKPOINT_KEEP = flags.DEFINE_integer(
  "checkpoint_keep", D.checkpoint_keep, "How many of the latest checkpoints to keep.", lower_bound=1
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Run directory; an existing one is resumed. Default: RUNS_DIR/<timestamp> or "
  "runs/<op>_lr_<lr>_seed_<seed>_optim_steps_<steps>[_<flag>_<value>...] (see above).",
)
_WANDB = flags.DEFINE_bool(
  "wandb", D.log.wandb, "Log to wandb, project 'grokking' (config log.wandb; needs wandb)."
)
_HISTORY_JSONL = flags.DEFINE_bool(
  "history_jsonl",
  False,
  "Also write RUN_DIR/history.jsonl: one JSON object per evaluation point (losses, "
  "accuracies, param_norm and param_norm/<module>), as experiments/export.py --format=jsonl.",
)
_SAVE_MODELS = flags.DEFINE_bool(
  "save_models", False, "No-op (TAUgrok): grokjax always saves checkpoints."
)
_SAVE_METRICS = flags.DEFINE_bool(
  "save_metrics", False, "No-op (TAUgrok): grokjax always saves metrics and figures."
)
_RECONFIGURE = flags.DEFINE_bool(
  "reconfigure", False, "Continue a run in its directory with changed steps/eval/checkpoint flags."
)
_WAIT = flags.DEFINE_bool(
  "wait", False, "If another process is training the run directory, wait for it instead of exiting."
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "Print the run directory and the resolved config as JSON; train nothing."
)

flags.register_validator("train_frac", lambda v: 0 < v < 1, message="must be in (0, 1), e.g. 0.5")
for _name in ("lr", "learning_rate"):
  flags.register_validator(_name, lambda v: v is None or v > 0, message="must be > 0, e.g. 1e-3")

_FLAG_NAME = re.compile(r"--([A-Za-z][\w-]*)(=.*)?", re.DOTALL)


def normalize_argv(argv: list[str]) -> list[str]:
  """argv with '-' in flag names spelled '_', as absl defines them:
  --train-frac=0.5 -> --train_frac=0.5. Values, positional arguments and everything
  after a bare '--' stay as they are."""
  out = list(argv[:1])
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      return out + list(argv[i:])
    m = _FLAG_NAME.fullmatch(arg)
    out.append(f"--{m[1].replace('-', '_')}{m[2] or ''}" if m else arg)
  return out


def _given(*names, canon=lambda v: v) -> dict:
  """{'--name=value': canonical value} of the flags among ``names`` given on the command line."""
  return {
    f"--{n}={flags.FLAGS[n].value}": canon(flags.FLAGS[n].value)
    for n in names
    if flags.FLAGS[n].present
  }


def _pick(given: dict, default):
  """The one value of a flag's spellings in ``given``, or ``default`` when none was given."""
  if len(set(given.values())) > 1:
    raise UserError(f"{' and '.join(given)} disagree; give only one of them")
  return next(iter(given.values()), default)


def run_name(cfg) -> str:
  """TAUgrok's directory name, plus _<flag>_<value> for each other run-defining flag
  that is not at its default."""
  name = f"{cfg.op}_lr_{cfg.optim.lr}_seed_{cfg.sweep.seeds[0]}_optim_steps_{cfg.steps}"
  for flag, value, default in (
    ("p", cfg.p, D.p),
    ("train_frac", cfg.sweep.train_fracs[0], TRAIN_FRAC),
    ("weight_decay", cfg.optim.weight_decay, D.optim.weight_decay),
    ("batch_size", cfg.batch_size, D.batch_size),
    ("model", cfg.model.name, D.model.name),
  ):
    if value != default:
      name += f"_{flag}_{value}"
  return name


def make_config():
  """The one-run sweep config the flags describe."""
  cfg = config_lib.default_config()
  ops = _given("op", "operation", "dataset", canon=data.canonical_op)
  cfg.op = _pick(ops, data.canonical_op(_OP.value))
  cfg.p = _P.value
  cfg.sweep.seeds, cfg.sweep.train_fracs = (_SEED.value,), (_TRAIN_FRAC.value,)
  cfg.model.name = _MODEL.value
  cfg.optim.lr = _pick(_given("lr", "learning_rate"), _LR.value)
  cfg.optim.weight_decay = _WEIGHT_DECAY.value
  cfg.batch_size = _BATCH_SIZE.value
  cfg.log.wandb = _WANDB.value
  steps = _given("steps", "optim_steps")
  eval_every = _pick(_given("eval_every", "steps_per_execution"), None)
  checkpoint_every = _CHECKPOINT_EVERY.value if _CHECKPOINT_EVERY.present else None
  if _EPOCHS.value is not None:
    per_epoch = plan.build(cfg).steps_per_epoch()
    steps[f"--epochs={_EPOCHS.value} ({per_epoch} steps per epoch)"] = _EPOCHS.value * per_epoch
    eval_every = eval_every or per_epoch
    checkpoint_every = checkpoint_every or 10 * per_epoch
  cfg.steps = _pick(steps, _STEPS.value)
  # A short run evaluates at least 20 times, so that its curves draw (100 steps: every 5).
  cfg.eval_every = eval_every or max(1, min(_EVAL_EVERY.value, cfg.steps // MIN_EVALS))
  cfg.checkpoint_every = checkpoint_every or _CHECKPOINT_EVERY.value
  keep_all = _EPOCHS.value is not None and not _CHECKPOINT_KEEP.present
  cfg.checkpoint_keep = (
    cfg.steps // cfg.checkpoint_every + 1 if keep_all else _CHECKPOINT_KEEP.value
  )
  cfg.name = run_name(cfg)
  return cfg


def run_dir(cfg, runs_dir: str | None) -> Path:
  if runs_dir and _WORKDIR.value:
    raise UserError(
      f"give a RUNS_DIR ({runs_dir}) or --workdir={_WORKDIR.value}, not both: RUNS_DIR gets "
      "a new timestamped run, --workdir is the run directory itself"
    )
  if _WORKDIR.value:
    return Path(_WORKDIR.value)
  if runs_dir:
    return Path(runs_dir) / time.strftime("%Y%m%d-%H%M%S")
  return Path("runs") / cfg.name


def main(argv):
  if len(argv) > 2:
    raise UserError(f"unexpected arguments {argv[2:]}; give at most one RUNS_DIR")
  cfg = make_config()
  workdir = run_dir(cfg, argv[1] if len(argv) == 2 else None)
  if _DRY_RUN.value:
    built = plan.build(cfg)  # validates everything a real run would
    integrations.make_writer(built.cfg, built.runs, workdir)  # --wandb needs wandb installed
    preview = dict(
      run_dir=str(workdir),
      steps_per_epoch=built.steps_per_epoch(),
      config=json.loads(config_lib.to_json(built.cfg)),
      runs=built.runs,
    )
    print(json.dumps(preview, indent=2))
    return
  workdir = sweep.run_sweep(cfg, workdir, reconfigure=_RECONFIGURE.value, wait=_WAIT.value)
  text, _ = report.report(workdir)
  print(f"{text}\nrun directory: {workdir}")
  if _HISTORY_JSONL.value:
    out = analysis.export(rundir.load(workdir), "jsonl", workdir / "history.jsonl")
    print(f"history: {out}")


if __name__ == "__main__":
  sys.argv = normalize_argv(sys.argv)
  cli.run(main)
