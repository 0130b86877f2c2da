"""Numerics checks of the sweep program: do TF32 or bfloat16 move the grokking step,
and is a run's place in its vmap group invisible in its bits?

  python experiments/numerics.py --check=precision   # the quick demo's grokking step per setting
  python experiments/numerics.py --check=invariance  # seed 1 alone = seed 1 of 3, bit for bit?
  python experiments/numerics.py --check=invariance --vmap_group=32 --quick
  python experiments/numerics.py --check=precision --setup=tests/tiny_config.py --quick

Each check is a function with its settings as arguments (``precision_check``,
``invariance_check``); experiments/gpu_check.sh runs them on a GPU, the tests with
tiny settings on the CPU. Every line is printed as it is measured.
"""

import json
import runpy
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from grokjax import cli, devices, layout, plan, report, sweep
from grokjax.errors import UserError

QUICK = Path(__file__).resolve().parent.parent / "configs" / "quick.py"
SETTINGS = {  # precision_check: name -> config values
  "default": dict(matmul_precision="default"),
  "high": dict(matmul_precision="high"),
  "highest": dict(matmul_precision="highest"),
  "bfloat16": dict(matmul_precision="default", compute_dtype="bfloat16"),
}

_CHECK = flags.DEFINE_enum("check", None, ["precision", "invariance"], "Which check to run.")
_SETTINGS = flags.DEFINE_list(
  "settings",
  None,
  "--check=precision: the settings, the first the reference: matmul precisions (default, "
  "high, highest) and bfloat16 (config.compute_dtype, default precision). Default: "
  "highest,bfloat16 on CPU (where the three precisions are the same float32 math), "
  "highest,default,bfloat16 on an accelerator.",
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "--check=precision: seeds per setting.", lower_bound=1)
_VMAP_GROUP = flags.DEFINE_integer(
  "vmap_group", 8, "--check=invariance: G of the exact layout.", lower_bound=1
)
_PRECISION = flags.DEFINE_enum(
  "precision", "default", ["default", "high", "highest"], "--check=invariance: matmul precision."
)
_SETUP = flags.DEFINE_string(
  "setup", str(QUICK), "The config file trained (default: configs/quick.py, the quick demo)."
)
_QUICK = flags.DEFINE_bool(
  "quick", False, "Tiny settings for a smoke test: 40 steps (precision), 20 (invariance)."
)


def load_config(setup, **values):
  """The config of the file ``setup`` with ``values`` set (dotted keys allowed)."""
  if not Path(setup).is_file():
    raise UserError(f"--setup {setup} is not a file; give a config file (.py)")
  cfg = runpy.run_path(str(setup))["get_config"]()
  cfg.update_from_flattened_dict(values)
  return cfg


def precision_check(
  settings: list[str], seeds: int = 3, steps: int | None = None, setup=QUICK
) -> list[dict]:
  """Steps to 99% of the quick demo (``setup``) under each numeric setting (``SETTINGS``), beside
  the seed spread of the first (the reference): on CPU the three matmul precisions
  are the same float32 math; on NVIDIA GPUs "default" is TF32; "bfloat16" is
  config.compute_dtype. ``steps``: fewer than the demo's (a smoke test). Returns a
  row per setting."""
  unknown = [s for s in settings if s not in SETTINGS]
  if unknown:
    raise UserError(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
  print(
    f"# {jax.local_devices()[0].device_kind}: {Path(setup).name}, {seeds} seeds"
    + (f", {steps} steps" if steps else ""),
    flush=True,
  )
  rows, ref = [], None
  for name in settings:
    cfg = load_config(setup, **{"sweep.seeds": tuple(range(seeds)), **SETTINGS[name]})
    if steps:
      cfg.steps, cfg.eval_points, cfg.checkpoint_every = steps, 10, steps
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      workdir = sweep.run_sweep(cfg, Path(tmp) / "quick", progress=False)
      elapsed = time.perf_counter() - start
      report.report(workdir)
      summary = json.loads((workdir / "summary.json").read_text())
    got = {key: [r.get(key) for r in summary] for key in ("train_step", "val_step")}
    final = [round(r["final_val_acc"], 3) for r in summary]
    verdict = ""
    if ref is None:
      ref = got
    else:
      verdict = "; " + ", ".join(_within(key, got[key], ref[key]) for key in got)
    print(
      f"{name:>8}: steps to 99% train {got['train_step']}, val {got['val_step']}; "
      f"final val acc {final}; {elapsed:.0f} s{verdict}",
      flush=True,
    )
    rows.append(dict(setting=name, **got, final_val_acc=final, seconds=elapsed))
  return rows


def _within(key: str, values: list, ref: list) -> str:
  """Whether the median of ``values`` lies in the seed range of the reference ``ref``."""
  if None in values or None in ref:
    same = [v is None for v in values] == [r is None for r in ref]
    return f"{key}: {'as' if same else 'NOT as'} the reference (some seeds never reach 99%)"
  lo, hi, mid = min(ref), max(ref), sorted(values)[len(values) // 2]
  inside = "within" if lo <= mid <= hi else "OUTSIDE"
  return f"{key}: median {mid} {inside} the reference's seed range [{lo}, {hi}]"


def invariance_check(
  group: int = 8, steps: int = 200, precision: str = "default", setup=QUICK
) -> dict:
  """Seed 1 of the quick demo (``setup``) trained with seeds 0, 1, 2 and alone: bit for bit the
  same parameters in the exact layout (groups of ``group`` runs)? And in the default
  one (on an accelerator: one vmap of all runs, which changes with K). Returns
  {mode: whether the bits agree}."""
  print(
    f"# {jax.local_devices()[0].device_kind} x{jax.device_count()}: {Path(setup).name}, seed 1 "
    f"of 3 vs alone, {steps} steps",
    flush=True,
  )
  out = {}
  for mode, g in (("exact", group), ("default", 0)):
    leaves = []
    for seeds in ((0, 1, 2), (1,)):
      values = {"sweep.seeds": seeds, "vmap_group": g, "matmul_precision": precision}
      cfg = load_config(setup, **values)
      s = plan.build(cfg)
      table, (runs,) = devices.device_inputs(s)
      ((init, chunk),) = devices.sweep_fns(s)
      states, _ = chunk(table, runs, init(table, runs), steps)
      k = seeds.index(1)
      leaves.append([np.asarray(x)[k] for x in jax.tree.leaves(states.params)])
    out[mode] = all(np.array_equal(a, b) for a, b in zip(*leaves))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*leaves))
    print(
      f"{mode:>8} (vmap group {layout.vmap_group(s.cfg) or 'all'}): "
      + ("bit-identical" if out[mode] else f"DIFFERENT, max |delta param| {diff:.3g}"),
      flush=True,
    )
  return out


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  sys.stdout.reconfigure(line_buffering=True)
  if _CHECK.value == "precision":
    accelerator = jax.default_backend() != "cpu"
    default = ["highest", "default", "bfloat16"] if accelerator else ["highest", "bfloat16"]
    steps = 40 if _QUICK.value else None
    precision_check(_SETTINGS.value or default, _SEEDS.value, steps, _SETUP.value)
  elif _CHECK.value == "invariance":
    steps = 20 if _QUICK.value else 200
    invariance_check(_VMAP_GROUP.value, steps, _PRECISION.value, _SETUP.value)
  else:
    raise UserError("give --check=precision or --check=invariance")


if __name__ == "__main__":
  cli.run(main)
