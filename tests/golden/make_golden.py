"""Writes tests/golden/shipped.json: the metric log of every shipped config, shrunk
to a few steps, as the training code of the commit it runs on computes it.

  python tests/golden/make_golden.py [CASE ...]  # on the commit before a refactor; CASEs:
                                                  # only those, merged into the file

test_golden.py compares today's numbers with it (bit for bit on the same jax).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import jaxlib  # noqa: E402
from shipped import CASES, metrics  # noqa: E402

path = HERE / "shipped.json"
out = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cases": {}}
if len(sys.argv) > 1:
  out = json.loads(path.read_text())
  assert (out["jax"], out["jaxlib"]) == (jax.__version__, jaxlib.__version__)
for case in sys.argv[1:] or CASES:
  with tempfile.TemporaryDirectory() as tmp:
    out["cases"][case] = metrics(case, tmp)
    print(case, len(out["cases"][case]), "records", flush=True)
path.write_text(json.dumps(out))
