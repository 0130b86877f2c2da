"""Writes tests/golden/shipped.json: the metric log of every shipped config, shrunk
to a few steps and one run per vmap group (tests/shipped.py), as the training code that
``grokjax`` imports computes it: to keep the golden the old code's, put that commit's
checkout first on PYTHONPATH (this file and shipped.py stay today's).

  git worktree add -f /tmp/old a21e3cc
  cd /tmp && PYTHONPATH=/tmp/old python /path/to/tests/golden/make_golden.py [CASE ...]
                                   # CASEs: only those, merged into the file

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
