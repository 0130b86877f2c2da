"""Throughput, memory and compile time of the sweep program, beside plain PyTorch.

  python experiments/bench.py                      # quick and paper configs, K = 1..512
  python experiments/bench.py --setups=paper --ks=1,256 --steps=2000
  python experiments/bench.py --quick              # seconds; what the tests run
  python experiments/bench.py --checkpoint_k=32    # Orbax save time and size per run
  python experiments/bench.py --setups=paper --ks=256 --compute_dtype=bfloat16 --vmap_group=32

Each (setup, K) is measured in a child process of its own (fresh device memory, a fresh
compile cache) under a time limit (--k_timeout_s): a K that runs past it gives a row saying
"timed out after N s" and the bench moves on. Every row is printed as soon as it is measured
and the rows so far are rewritten to the JSON file (--out) after each one. The numerics
checks (precision, invariance) are experiments/numerics.py.
"""

import importlib.util
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from absl import flags

from grokjax import checkpoint, cli, devices, layout, machine, plan
from grokjax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SETUPS = {"quick": "configs/quick.py", "paper": "configs/div.py"}
# Dense peak FLOP/s of the matmul precision JAX uses by default for float32.
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 494.7, "NVIDIA H200": 494.7}  # TF32
PEAK_TFLOPS_BF16 = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H200": 989.4}

_SETUPS = flags.DEFINE_list(
  "setups", ["quick", "paper"], "Configs to time: quick, paper, or config files (.py)."
)
_KS = flags.DEFINE_list(
  "ks", None, "Runs per program (default: 1,8,32,128,256,512 on an accelerator, 1,8,32 on CPU)."
)
_STEPS = flags.DEFINE_integer(
  "steps", 500, "Timed steps per K (after one warm-up chunk).", lower_bound=1
)
_EVAL_EVERY = flags.DEFINE_integer(
  "eval_every", 100, "Evaluation cadence, as in a sweep.", lower_bound=1
)
_TORCH = flags.DEFINE_bool("torch", True, "Also time a plain PyTorch loop if torch imports.")
_PRECISION = flags.DEFINE_enum(
  "precision", "default", ["default", "high", "highest"], "config.matmul_precision to time."
)
_CHECKPOINT_K = flags.DEFINE_integer(
  "checkpoint_k", 0, "If > 0, only time an Orbax save of K paper-model runs and report its size."
)
_COMPUTE_DTYPE = flags.DEFINE_enum(
  "compute_dtype", "float32", ["float32", "bfloat16"], "config.compute_dtype to time."
)
_VMAP_GROUP = flags.DEFINE_integer(
  "vmap_group",
  0,
  "config.vmap_group to time: G > 0 is the exact layout (groups of G runs); 0 the default "
  "(exact on CPU, one vmap of all runs on an accelerator).",
)
_QUICK = flags.DEFINE_bool(
  "quick",
  False,
  "Tiny settings for a smoke test: 20 steps, eval every 10, K = 1,2 of the quick setup "
  "(--setups and --ks still apply when given).",
)
_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the rows as JSON (after each row).")
_K_TIMEOUT_S = flags.DEFINE_float(
  "k_timeout_s",
  120.0,
  "Time limit of one (setup, K) measurement, child start, compile and steps together; one "
  "past it is recorded as 'timed out' and the bench goes on with the next K.",
)
# Internal: the parent runs each measurement as `bench.py --_measure=SPEC` in a child process.
_MEASURE = flags.DEFINE_string("_measure", None, "(internal) Measure one row, print it as JSON.")
_PROBE = flags.DEFINE_bool("_probe", False, "(internal) Print the device as JSON.")
_STALL_KS = flags.DEFINE_list(
  "_stall_ks", [], "(for tests) Ks whose measurement hangs, to exercise --k_timeout_s."
)

MARK = "@@bench "  # prefix of the child's JSON lines on its stdout


def load_setup(name: str):
  """The config of a setup (quick, paper, or the path of a config file), as its file
  defines it."""
  if name in SETUPS:
    path = ROOT / SETUPS[name]
  elif name.endswith(".py") and Path(name).is_file():
    path = Path(name)
  else:
    raise UserError(
      f"unknown setup {name!r}; choose from {', '.join(SETUPS)} or give a config file (.py)"
    )
  return runpy.run_path(str(path))["get_config"]()


def setup_config(name: str, k: int, eval_every: int):
  cfg = load_setup(name)
  cfg.sweep.seeds, cfg.sweep.train_fracs = tuple(range(k)), (0.5,)
  cfg.eval_every = eval_every
  cfg.matmul_precision = _PRECISION.value
  cfg.compute_dtype = _COMPUTE_DTYPE.value
  cfg.vmap_group = _VMAP_GROUP.value
  return cfg


def flops_per_run_step(s: plan.Sweep) -> float:
  """6 x parameters x tokens of a batch: the usual training-FLOP estimate."""
  params = s.model(0).init(jax.random.key(0), s.table.inputs[:1])["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  return 6.0 * n_params * s.programs[0].static.batch * s.table.inputs.shape[1]


def bench_grokjax(cfg, steps: int, emit=lambda **kw: None) -> dict:
  s = plan.build(cfg)
  k = len(s.runs)
  table, (runs,) = devices.device_inputs(s)  # one program: the runs differ in seeds only
  ((init, chunk),) = devices.sweep_fns(s)
  states = init(table, runs)
  start = time.perf_counter()
  lowered = chunk.lower(table, runs, states, cfg.eval_every)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  emit(compile_s=compile_s)  # known even if the steps then run past the time limit
  mem = compiled.memory_analysis()
  in_program = lowered.args_info[0][1].seed.shape[0]  # runs (one CPU: one vmap group's)
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
    vmap_group=layout.vmap_group(cfg) or k,
    padded_k=int(runs.seed.shape[0]),
    compute_dtype=cfg.compute_dtype,
    run_steps_per_s=rate,
    compile_s=compile_s,
    program_mib_per_run=(mem.argument_size_in_bytes + mem.temp_size_in_bytes) / in_program / 2**20
    if mem
    else None,
  )
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    row["peak_mib_per_run"] = stats["peak_bytes_in_use"] / k / 2**20
  peaks = PEAK_TFLOPS_BF16 if cfg.compute_dtype == "bfloat16" else PEAK_TFLOPS
  peak = peaks.get(jax.local_devices()[0].device_kind)
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
  s = plan.build(cfg)
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  rate = torch_reference.steps_per_second(s.table, s.train_masks[0], s.cfg, steps, device)
  return dict(framework="pytorch", k=1, run_steps_per_s=rate)


def bench_checkpoint(k: int) -> None:
  """Save time and on-disk size per run of the batched state of k paper-model runs."""
  s = plan.build(setup_config("paper", k, 100))
  table, (runs,) = devices.device_inputs(s)  # one program: the runs differ in seeds only
  ((init, chunk),) = devices.sweep_fns(s)
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


def _cell(row: dict, key: str, spec: str) -> str:
  return format(row[key], spec) if row.get(key) is not None else "-"


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}")
  sys.stdout.reconfigure(line_buffering=True)  # every line as it comes, also into a pipe
  if _PROBE.value:
    return _probe()
  if _MEASURE.value:
    return _measure(json.loads(_MEASURE.value))
  if _CHECKPOINT_K.value > 0:
    return bench_checkpoint(_CHECKPOINT_K.value)
  ks_given = _check_args()
  device = _run_child(["--_probe"], _K_TIMEOUT_S.value)
  if "error" in device:
    print(f"# device probe {device['error']}", flush=True)
  accelerator = device.get("backend", "cpu") != "cpu"
  ks = ks_given if _KS.value else ([1, 8, 32, 128, 256, 512] if accelerator else [1, 8, 32])
  setups, steps, eval_every = _SETUPS.value, _STEPS.value, _EVAL_EVERY.value
  if _QUICK.value:  # tiny settings; --setups and --ks given on the command line still apply
    steps, eval_every = 20, 10
    setups = setups if flags.FLAGS["setups"].present else ["quick"]
    ks = ks if flags.FLAGS["ks"].present else [1, 2]
  for name in setups:
    load_setup(name)  # an unknown setup fails before anything is measured
  limit = _K_TIMEOUT_S.value
  print(
    f"# {device.get('kind', '?')} x{device.get('count', '?')} ({device.get('backend', '?')}), "
    f"jax {jax.__version__}, {device.get('machine', '?')}; "
    f"{steps} steps per K, at most {limit:g} s per K; rows go to {_OUT.value}"
  )
  print(
    f"{'setup':>6} {'framework':>9} {'K':>4} {'run-steps/s':>12} {'vs torch':>8} "
    f"{'compile s':>9} {'MiB/run':>8} {'TFLOP/s':>8} {'vmap group':>10} {'dtype':>8}",
    flush=True,
  )
  out = Path(_OUT.value)
  rows = []
  _write_rows(out, rows)
  for name in setups:
    jobs = [("grokjax", k) for k in ks]
    if _TORCH.value and importlib.util.find_spec("torch") is not None:
      jobs.insert(0, ("pytorch", 1))
    base = None
    for framework, k in jobs:
      spec = dict(
        setup=name,
        framework=framework,
        k=k,
        steps=steps,
        eval_every=eval_every,
        stall=framework == "grokjax" and str(k) in _STALL_KS.value,
      )
      settings = [
        f"--precision={_PRECISION.value}",
        f"--compute_dtype={_COMPUTE_DTYPE.value}",
        f"--vmap_group={_VMAP_GROUP.value}",
      ]
      row = _run_child([f"--_measure={json.dumps(spec)}", *settings], limit)
      if row is None:  # torch did not import in the child after all
        continue
      row = {"framework": framework, "k": k, **row}
      row.update(
        setup=name,
        device=device.get("kind"),
        machine=device.get("machine"),
        steps=steps,
        eval_every=eval_every,
        precision=_PRECISION.value,
        compute_dtype=_COMPUTE_DTYPE.value,
      )
      if framework == "pytorch" and "error" not in row:
        base = row
      if base and "error" not in row:
        row["vs_torch"] = row["run_steps_per_s"] / base["run_steps_per_s"]
      rows.append(row)
      _write_rows(out, rows)
      _print_row(row)
  bad = sum("error" in r for r in rows)
  print(
    f"wrote {_OUT.value}" + (f" ({bad} of {len(rows)} rows timed out or failed)" if bad else "")
  )


def _print_row(row: dict) -> None:
  head = f"{row['setup']:>6} {row['framework']:>9} {row['k']:>4}"
  if "error" in row:
    compiled = f" (compiled in {row['compile_s']:.1f} s)" if row.get("compile_s") else ""
    print(f"{head} {row['error']}{compiled}", flush=True)
    return
  mem = row.get("peak_mib_per_run", row.get("program_mib_per_run"))
  print(
    f"{head} {row['run_steps_per_s']:>12.1f} "
    f"{_cell(row, 'vs_torch', '.2f'):>8} {_cell(row, 'compile_s', '.1f'):>9} "
    f"{format(mem, '.1f') if mem is not None else '-':>8} {_cell(row, 'tflops', '.3f'):>8} "
    f"{_cell(row, 'vmap_group', 'd'):>10} {row.get('compute_dtype', '-'):>8}",
    flush=True,
  )


def _check_args() -> list[int]:
  """--ks as integers, and --out, checked before anything is measured."""
  ks = []
  for k in _KS.value or []:
    try:
      ks.append(int(k))
    except ValueError:
      raise UserError(f"--ks holds {k!r}, not an integer; e.g. --ks=1,8,32") from None
    if ks[-1] < 1:
      raise UserError(f"--ks holds {k}; runs per program are >= 1, e.g. --ks=1,8,32")
  out = Path(_OUT.value)
  if out.is_dir():
    raise UserError(f"--out {out} is a directory; give a file, e.g. --out={out / 'bench.json'}")
  existing = next((p for p in out.absolute().parents if p.exists()), Path("/"))
  if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"cannot write --out {out} (in {existing}); choose another --out")
  return ks


def _write_rows(path: Path, rows: list) -> None:
  """The rows so far, replacing the file in one step (a reader never sees half a file)."""
  tmp = path.with_name(path.name + ".tmp")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
      f.write(json.dumps(rows, indent=2))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    reason = e.strerror or e
    raise UserError(f"cannot write --out {path} ({reason}); choose another --out") from None


def _run_child(args: list[str], limit: float) -> dict | None:
  """This script with ``args`` in a child process, stopped after ``limit`` seconds: the
  merged JSON objects it printed (lines starting with MARK), or {"error": ...} when it
  ran past the limit or failed. The child's stderr passes through (its warnings, a
  traceback). The child stays in this process group, so a `timeout` around the bench
  stops it too."""
  proc = subprocess.Popen(
    [sys.executable, str(Path(__file__).resolve()), *args],
    stdout=subprocess.PIPE,
    text=True,
  )
  error = None
  try:
    stdout, _ = proc.communicate(timeout=limit)
  except subprocess.TimeoutExpired:
    proc.kill()  # this one child, by its id
    stdout, _ = proc.communicate()
    error = f"timed out after {limit:g} s"
  except BaseException:  # Ctrl-C: take the child along
    proc.kill()
    proc.wait()
    raise
  result, null = {}, False
  for line in stdout.splitlines():
    if line.startswith(MARK):
      part = json.loads(line[len(MARK) :])
      if part is None:
        null = True
      else:
        result.update(part)
  if error is None and proc.returncode != 0:
    error = result.pop("error", None) or f"failed (exit status {proc.returncode})"
  if error is not None:
    return {**result, "error": error}
  return None if null else result


def _emit(obj) -> None:
  print(MARK + json.dumps(obj), flush=True)


def _probe() -> None:
  device = jax.local_devices()[0]
  _emit(
    dict(
      kind=device.device_kind,
      count=jax.device_count(),
      backend=jax.default_backend(),
      machine=machine.describe(),
    )
  )


def _measure(spec: dict) -> None:
  """One row, measured in this (child) process: printed as MARK + JSON lines."""
  if spec.get("stall"):
    time.sleep(1e6)  # a hang, for the tests of --k_timeout_s
  cfg = setup_config(spec["setup"], spec["k"], spec["eval_every"])
  try:
    if spec["framework"] == "pytorch":
      row = bench_torch(cfg, spec["steps"])
    else:
      row = bench_grokjax(cfg, spec["steps"], emit=lambda **kw: _emit(kw))
  except Exception as e:  # a row saying what failed; the traceback goes to stderr
    _emit({"error": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
    raise
  _emit(row)


if __name__ == "__main__":
  cli.run(main)
