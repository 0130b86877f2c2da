import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_and_writes_rows(tmp_path):
  out_file = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments" / "bench.py"),
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
    assert r["run_steps_per_s"] > 0 and r["compile_s"] > 0 and r["program_mib_per_run"] > 0
    assert r["tflops"] > 0
  assert "run-steps/s" in out.stdout and str(out_file) in out.stdout
