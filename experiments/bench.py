"""Throughput, memory and compile time of the sweep program, beside plain PyTorch.

  python experiments/bench.py                      # quick and paper configs, K = 1..512
  python experiments/bench.py --setups=paper --ks=1,256 --steps=2000
  python experiments/bench.py --quick              # seconds; what the tests run
  python experiments/bench.py --checkpoint_k=32    # Orbax save time and size per run
  python experiments/bench.py --precision_check    # the quick demo's grokking step per precision

Prints one row per (setup, K) and writes the rows as JSON (--out).
"""

import json
import platform
import runpy
import tempfile
import time
from pathlib import Path

import jax
from absl import flags

from grokjax import checkpoint, cli, sweep
from grokjax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SETUPS = {"quick": "configs/quick.py", "paper": "configs/div.py"}
# Dense peak FLOP/s of the matmul precision JAX uses by default for float32.
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 494.7, "NVIDIA H200": 494.7}  # TF32

_SETUPS = flags.DEFINE_list("setups", ["quick", "paper"], "Configs to time: quick, paper.")
_KS = flags.DEFINE_list(
  "ks", None, "Runs per program (default: 1,8,32,128,256,512 on an accelerator, 1,8,32 on CPU)."
)
_STEPS = flags.DEFINE_integer("steps", 500, "Timed steps per K (after one warm-up chunk).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Evaluation cadence, as in a sweep.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time a plain PyTorch loop if torch imports.")
_PRECISION = flags.DEFINE_enum(
  "precision", "default", ["default", "high", "highest"], "config.matmul_precision to time."
)
_CHECKPOINT_K = flags.DEFINE_integer(
  "checkpoint_k", 0, "If > 0, only time an Orbax save of K paper-model runs and report its size."
)
_PRECISION_CHECK = flags.DEFINE_bool(
  "precision_check",
  False,
  "Only train the quick demo (3 seeds) at each matmul precision and print its steps to 99% "
  "train and val accuracy: does the grokking step move with TF32?",
)
_QUICK = flags.DEFINE_bool("quick", False, "Tiny settings for a smoke test (seconds).")
_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the rows as JSON.")


def load_setup(name: str):
  """The config of a setup, as its file defines it."""
  if name not in SETUPS:
    raise UserError(f"unknown setup {name!r}; choose from {', '.join(SETUPS)}")
  return runpy.run_path(str(ROOT / SETUPS[name]))["get_config"]()


def setup_config(name: str, k: int, eval_every: int):
  cfg = load_setup(name)
  cfg.sweep.seeds, cfg.sweep.train_fracs = tuple(range(k)), (0.5,)
  cfg.eval_every = eval_every
  cfg.matmul_precision = _PRECISION.value
  return cfg


def flops_per_run_step(s: sweep.Sweep) -> float:
  """6 x parameters x tokens of a batch: the usual training-FLOP estimate."""
  params = s.model.init(jax.random.key(0), s.table.inputs[:1])["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  return 6.0 * n_params * s.batch * s.table.inputs.shape[1]


def bench_grokjax(cfg, steps: int) -> dict:
  s = sweep.build(cfg)
  k = len(s.runs)
  table, runs = sweep.device_inputs(s)
  init, chunk = sweep.sweep_fns(s)
  states = init(table, runs)
  start = time.perf_counter()
  compiled = chunk.lower(table, runs, states, cfg.eval_every).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  states, metrics = chunk(table, runs, states, cfg.eval_every)  # warm-up
  jax.device_get(metrics)
  chunks = max(steps // cfg.eval_every, 1)
  start = time.perf_counter()
  for _ in range(chunks):
    states, metrics = chunk(table, runs, states, cfg.eval_every)
    jax.device_get(metrics)  # as the sweep loop does
  elapsed = time.perf_counter() - start
  rate = k * chunks * cfg.eval_every / elapsed
  row = dict(
    framework="grokjax",
    k=k,
    vmap_group=min(sweep.vmap_group(cfg, s.batch) or k, k),
    run_steps_per_s=rate,
    compile_s=compile_s,
    program_mib_per_run=(mem.argument_size_in_bytes + mem.temp_size_in_bytes) / k / 2**20
    if mem
    else None,
  )
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    row["peak_mib_per_run"] = stats["peak_bytes_in_use"] / k / 2**20
  peak = PEAK_TFLOPS.get(jax.local_devices()[0].device_kind)
  row["tflops"] = rate * flops_per_run_step(s) / 1e12
  if peak:
    row["peak_fraction"] = row["tflops"] / peak
  return row


def bench_torch(cfg, steps: int) -> dict | None:
  try:
    import torch  # noqa: F401
    import torch_reference
  except ImportError:
    return None
  s = sweep.build(cfg)
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  rate = torch_reference.steps_per_second(s.table, s.train_masks[0], s.cfg, steps, device)
  return dict(framework="pytorch", k=1, run_steps_per_s=rate)


def bench_checkpoint(k: int) -> None:
  """Save time and on-disk size per run of the batched state of k paper-model runs."""
  s = sweep.build(setup_config("paper", k, 100))
  table, runs = sweep.device_inputs(s)
  init, chunk = sweep.sweep_fns(s)
  states, _ = chunk(table, runs, init(table, runs), 10)  # Adam moments are zero at init
  jax.block_until_ready(states)
  with tempfile.TemporaryDirectory() as tmp:
    mngr = checkpoint.manager(tmp)
    for step in (1, 2):  # the first save also sets up the directory: time the second
      start = time.perf_counter()
      checkpoint.save(mngr, step, states, {"step": step})
      blocking = time.perf_counter() - start
      mngr.wait_until_finished()
      total = time.perf_counter() - start
    files = (Path(tmp) / "checkpoints" / "2").rglob("*")
    size = sum(f.stat().st_size for f in files if f.is_file())
    mngr.close()
  print(
    f"checkpoint of {k} paper-model runs: {size / k / 2**20:.2f} MiB per run, "
    f"save {total:.2f} s ({blocking:.2f} s blocking the training loop)"
  )


def precision_check() -> None:
  """Steps to 99% of the quick demo under each float32 matmul precision (on CPU all
  three are the same float32 math; on NVIDIA GPUs "default" is TF32)."""
  print(f"# {jax.local_devices()[0].device_kind}: configs/quick.py, 3 seeds")
  for precision in ("default", "high", "highest"):
    cfg = load_setup("quick")
    cfg.matmul_precision = precision
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      workdir = sweep.run_sweep(cfg, Path(tmp) / "quick", progress=False)
      elapsed = time.perf_counter() - start
      summary = json.loads((workdir / "summary.json").read_text())
    train, val = ([r[key] for r in summary] for key in ("train_step", "val_step"))
    final = [round(r["final_val_acc"], 3) for r in summary]
    print(
      f"{precision:>8}: steps to 99% train {train}, val {val}; "
      f"final val acc {final}; {elapsed:.0f} s"
    )


def _cell(row: dict, key: str, spec: str) -> str:
  return format(row[key], spec) if row.get(key) is not None else "-"


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  if _CHECKPOINT_K.value > 0:
    return bench_checkpoint(_CHECKPOINT_K.value)
  if _PRECISION_CHECK.value:
    return precision_check()
  accelerator = jax.default_backend() != "cpu"
  ks = (
    [int(k) for k in _KS.value]
    if _KS.value
    else ([1, 8, 32, 128, 256, 512] if accelerator else [1, 8, 32])
  )
  setups, steps, eval_every = _SETUPS.value, _STEPS.value, _EVAL_EVERY.value
  if _QUICK.value:
    setups, ks, steps, eval_every = ["quick"], [1, 2], 20, 10
  device = jax.local_devices()[0]
  print(
    f"# {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), "
    f"jax {jax.__version__}, {platform.processor() or platform.machine()}"
  )
  print(
    f"{'setup':>6} {'framework':>9} {'K':>4} {'run-steps/s':>12} {'vs torch':>8} "
    f"{'compile s':>9} {'MiB/run':>8} {'TFLOP/s':>8} {'vmap group':>10}"
  )
  rows = []
  for name in setups:
    base = bench_torch(setup_config(name, 1, eval_every), steps) if _TORCH.value else None
    for row in ([base] if base else []) + [
      bench_grokjax(setup_config(name, k, eval_every), steps) for k in ks
    ]:
      row.update(
        setup=name,
        device=device.device_kind,
        steps=steps,
        eval_every=eval_every,
        precision=_PRECISION.value,
      )
      if base:
        row["vs_torch"] = row["run_steps_per_s"] / base["run_steps_per_s"]
      rows.append(row)
      mem = row.get("peak_mib_per_run", row.get("program_mib_per_run"))
      print(
        f"{name:>6} {row['framework']:>9} {row['k']:>4} {row['run_steps_per_s']:>12.1f} "
        f"{_cell(row, 'vs_torch', '.2f'):>8} {_cell(row, 'compile_s', '.1f'):>9} "
        f"{format(mem, '.1f') if mem is not None else '-':>8} {_cell(row, 'tflops', '.3f'):>8} "
        f"{_cell(row, 'vmap_group', 'd'):>10}",
        flush=True,
      )
  Path(_OUT.value).write_text(json.dumps(rows, indent=2))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
