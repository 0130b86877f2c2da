import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import killable_env

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(ROOT / "experiments" / "bench.py")
TINY = str(ROOT / "tests" / "tiny_config.py")


@pytest.mark.slow
def test_bench_quick_prints_and_writes_rows(tmp_path):
  out_file = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [
      sys.executable,
      BENCH,
      "--quick",
      "--notorch",
      f"--out={out_file}",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr
  rows = json.loads(out_file.read_text())
  assert [(r["framework"], r["k"]) for r in rows] == [("grokjax", 1), ("grokjax", 2)]
  for r in rows:
    assert "error" not in r, r
    assert r["run_steps_per_s"] > 0 and r["compile_s"] > 0 and r["program_mib_per_run"] > 0
    assert r["tflops"] > 0
  assert "run-steps/s" in out.stdout and str(out_file) in out.stdout


@pytest.mark.slow
def test_bench_k_past_its_time_limit_is_a_row_and_the_bench_goes_on(tmp_path):
  """K=2 hangs (a test hook): after --k_timeout_s its row says 'timed out', is printed and
  already in the JSON file while the bench goes on to measure K=1."""
  out_file = tmp_path / "bench.json"
  limit = 45  # K=1 of the tiny config takes ~10 s on 2 idle cores, ~35 s on busy ones
  proc = subprocess.Popen(
    [
      sys.executable,
      BENCH,
      "--quick",
      f"--setups={ROOT / 'tests' / 'tiny_config.py'}",
      "--ks=2,1",
      "--_stall_ks=2",
      f"--k_timeout_s={limit}",
      "--notorch",
      f"--out={out_file}",
    ],
    stdout=subprocess.PIPE,
    text=True,
    env=killable_env(JAX_PLATFORMS="cpu"),  # its stalled child is killed
  )
  try:
    lines, start = [], None
    for line in proc.stdout:
      lines.append(line)
      if "run-steps/s" in line:  # the header: the stalled K=2 starts now
        start = time.monotonic()
      if line.split()[2:3] == ["2"] and "timed out after" in line:  # the row of K=2
        # printed as soon as the limit passed, and saved before it was printed
        assert start and time.monotonic() - start < limit + 60, lines
        saved = json.loads(out_file.read_text())
        assert [(r["k"], r["error"]) for r in saved] == [(2, f"timed out after {limit} s")]
        assert proc.poll() is None  # K=1 is still to come
    assert proc.wait(timeout=600) == 0
  finally:
    proc.kill()
  stdout = "".join(lines)
  rows = json.loads(out_file.read_text())
  assert [(r["framework"], r["k"]) for r in rows] == [("grokjax", 2), ("grokjax", 1)]
  assert rows[0]["error"] == f"timed out after {limit} s" and "run_steps_per_s" not in rows[0]
  assert "error" not in rows[1] and rows[1]["run_steps_per_s"] > 0, rows[1]
  assert f"timed out after {limit} s" in stdout and "1 of 2 rows timed out or failed" in stdout


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")), reason="bash, timeout")
def test_gpu_check_dry_run(tmp_path):
  """experiments/gpu_check.sh --dry-run: every step of the GPU check with tiny settings,
  its bench rows of the tiny config (GPU_CHECK_SETUP): the script, not the compile time of
  the paper model on CPU."""
  env = {k: v for k, v in os.environ.items() if k not in ("OUT_DIR", "GPU_CHECK_BUDGET_S")}
  env.update(JAX_PLATFORMS="cpu", PYTHON=sys.executable, OUT=str(tmp_path), GPU_CHECK_SETUP=TINY)
  out = subprocess.run(
    ["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--dry-run"],
    capture_output=True,
    text=True,
    env=env,
    timeout=1500,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  rows = (
    ("bench_paper.json", 1, "float32", 1),
    ("bench_bf16.json", 1, "bfloat16", 1),
    ("bench_exact.json", 3, "float32", 2),  # 3 runs in pairs: padded to 4
    ("bench_quick.json", 2, "float32", 1),
  )
  for name, k, dtype, group in rows:
    (row,) = json.loads((tmp_path / name).read_text())
    assert (row["setup"], row["k"], row["compute_dtype"]) == (TINY, k, dtype), row
    assert row["vmap_group"] == group and row["run_steps_per_s"] > 0, row
  assert json.loads((tmp_path / "div_summary.json").read_text())
  texts = (
    "backend cpu",
    "steps to 99% train",
    "bfloat16: steps to 99% train",
    "exact (vmap group 2): bit-identical",
    "div sweep: 1 runs x 20 steps",
    "=== summary",
  )
  for text in texts:
    assert text in out.stdout, text
  steps = ("deps", "device", "bench_paper", "bench_bf16", "bench_exact", "invariance_check")
  for step in (*steps, "precision_check", "div_sweep", "bench_quick"):
    assert f"  {step}: ok" in out.stdout, step


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")), reason="bash, timeout")
def test_gpu_check_with_its_budget_spent_skips_every_step_and_fails(tmp_path):
  """GPU_CHECK_BUDGET_S bounds the whole script: with nothing left, every step is skipped
  (none starts), the summary says so and names the JSON files not written, exit status 1."""
  env = {k: v for k, v in os.environ.items() if k != "OUT_DIR"}
  env.update(PYTHON=sys.executable, OUT=str(tmp_path), GPU_CHECK_BUDGET_S="4")
  out = subprocess.run(
    ["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--dry-run"],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
  steps = ("deps", "device", "bench_paper", "bench_bf16", "bench_exact", "invariance_check")
  for step in (*steps, "precision_check", "div_sweep", "bench_quick"):
    assert f"=== [{step}] skipped: the 4 s budget is spent" in out.stdout, step
    assert f"  {step}: skipped (budget spent)" in out.stdout, step
  assert "at most" not in out.stdout  # no step started
  for name in ("bench_paper", "bench_bf16", "bench_exact", "bench_quick"):
    assert f"  {name}.json: not written" in out.stdout, name
  assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_numerics_checks_are_functions_of_their_settings(capsys):
  """experiments/numerics.py's checks take their settings as arguments (gpu_check.sh
  gives them as flags): the invariance check finds seed 1's bits the same alone and in
  a group of 2, the precision check trains each setting and compares it with the first."""
  import importlib.util

  from grokjax.errors import UserError

  spec = importlib.util.spec_from_file_location("numerics", ROOT / "experiments" / "numerics.py")
  numerics = sys.modules.setdefault("numerics", importlib.util.module_from_spec(spec))
  if not hasattr(numerics, "precision_check"):
    spec.loader.exec_module(numerics)
  assert numerics.invariance_check(group=2, steps=10, setup=TINY) == {
    "exact": True,
    "default": True,  # CPU: the exact layout, groups of 1
  }
  rows = numerics.precision_check(["highest", "bfloat16"], seeds=1, steps=20, setup=TINY)
  assert [r["setting"] for r in rows] == ["highest", "bfloat16"]
  assert all(len(r["val_step"]) == 2 for r in rows)  # the tiny config's 2 train fractions
  out = capsys.readouterr().out
  assert "exact (vmap group 2): bit-identical" in out and "bfloat16: steps to 99% train" in out
  with pytest.raises(UserError, match=r"unknown settings \['tf32'\]"):
    numerics.precision_check(["tf32"], setup=TINY)
