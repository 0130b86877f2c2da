"""Every shipped config gives the golden numbers: no change moves them by accident.

tests/golden/shipped.json holds the metric log of each shipped config, shrunk to a
few steps and trained one run per vmap group (tests/shipped.py), as
tests/golden/make_golden.py computed it (regenerated only on purpose: its docstring
says how and when it last was), and the fingerprint of the machine that computed it
(``grokjax.machine``: jax and jaxlib, backend, device kind and, on CPU, the processor
and the ISA XLA targets).

On that machine the numbers must match bit for bit. Elsewhere (another jax, another
CPU: XLA compiles for the host's instruction set, so an Intel AVX-512 server gives other
last bits than the AMD EPYC that made the golden) they must match to float32 rounding
over the few golden steps. Which comparison ran is printed at the end of pytest's output
(``conftest.pytest_terminal_summary``) and named in every failure.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shipped import CASES, metrics

from grokjax import machine

GOLDEN = json.loads((Path(__file__).parent / "golden" / "shipped.json").read_text())
# float32 rounding, amplified over at most 12 steps (an AVX2 cap on an AVX-512 machine
# moves them by <= 4e-7 relative).
RTOL, ATOL = 1e-5, 1e-7


def comparison() -> tuple[bool, str]:
  """(bit for bit?, the comparison in words): bit for bit only on the golden's machine."""
  diff = machine.differences(GOLDEN["machine"], machine.fingerprint())
  if not diff:
    return True, "golden numbers: bit for bit (this machine's fingerprint is the golden's)"
  return False, (
    f"golden numbers: to float32 rounding (rtol {RTOL}), not bit for bit: made on another "
    f"machine ({'; '.join(diff)})"
  )


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_shipped_config_gives_the_same_numbers(case, tmp_path):
  exact, how = comparison()
  got, want = metrics(case, tmp_path), GOLDEN["cases"][case]
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for name in (n for n in w if n != "step"):
      where = (case, name, w["step"], how)
      if exact:
        assert np.array_equal(g[name], w[name], equal_nan=True), where
      np.testing.assert_allclose(
        g[name], w[name], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=str(where)
      )


def test_golden_records_the_machine():
  fp = GOLDEN["machine"]
  assert {"jax", "jaxlib", "backend", "device_kind"} <= set(fp)
  if fp["backend"] == "cpu":
    assert fp["isa"] and fp["cpu"], "a CPU golden must name the processor and its ISA"


def test_a_capped_isa_is_another_machine(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  here = machine.fingerprint()
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
  capped = machine.fingerprint()
  if here["backend"] == "cpu":
    assert machine.differences(here, capped) == ["max_isa: '' there, 'AVX2' here"]


@pytest.mark.slow
def test_other_machine_branch_runs_and_holds(tmp_path):
  """The fallback cannot rot: in a subprocess whose XLA targets AVX2 only (another
  machine's bits wherever the host has more), the smallest case runs the float32
  rounding comparison and passes."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_cpu_max_isa=AVX2",
    PYTEST_ADDOPTS="",
  )
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-n",
      "0",
      "-p",
      "no:cacheprovider",
      f"{__file__}::test_shipped_config_gives_the_same_numbers[interp.py:paper]",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=Path(__file__).parent.parent,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "golden numbers: to float32 rounding" in proc.stdout, proc.stdout[-2000:]
  assert "1 passed" in proc.stdout
