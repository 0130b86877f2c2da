"""Every shipped config gives the numbers it gave before the registry refactor.

tests/golden/shipped.json holds the metric log of each shipped config, shrunk to a
few steps and trained one run per vmap group (tests/shipped.py), as commit a21e3cc
computed it (tests/golden/make_golden.py with that commit's grokjax on PYTHONPATH). On
the same jax and jaxlib the numbers must match bit for bit; on another version, to
float32 rounding.
"""

import json
from pathlib import Path

import jax
import jaxlib
import numpy as np
import pytest
from shipped import CASES, metrics

GOLDEN = json.loads((Path(__file__).parent / "golden" / "shipped.json").read_text())
SAME_JAX = (GOLDEN["jax"], GOLDEN["jaxlib"]) == (jax.__version__, jaxlib.__version__)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_shipped_config_gives_the_same_numbers(case, tmp_path):
  got, want = metrics(case, tmp_path), GOLDEN["cases"][case]
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for name in (n for n in w if n != "step"):
      if SAME_JAX:
        assert np.array_equal(g[name], w[name], equal_nan=True), (case, name, w["step"])
      np.testing.assert_allclose(g[name], w[name], rtol=1e-5, atol=1e-7, equal_nan=True)
