"""Writes tests/golden/shipped.json: the metric log of every shipped config, shrunk
to a few steps and one run per vmap group (tests/shipped.py), as the training code that
``grokjax`` imports computes it, with the fingerprint of the machine it ran on
(grokjax/machine.py, loaded from this checkout); test_golden.py compares today's numbers
with it bit for bit on that machine, to float32 rounding elsewhere.

Regenerate it deliberately, when a change moves the numbers on purpose, and say so in
the commit with the largest change (compare with ``git show HEAD:tests/golden/shipped.json``):

  python tests/golden/make_golden.py           # every case
  python tests/golden/make_golden.py CASE ...  # only those, merged (on the same machine)

Last regenerated when a program stopped carrying methods its runs do not use
(checkpoint format 2): every number within 2e-7 relative of the commit before.
To compute the golden with an older commit's code, put its checkout first on
PYTHONPATH (this file and shipped.py stay today's).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import importlib.util  # noqa: E402

from shipped import CASES, metrics  # noqa: E402

spec = importlib.util.spec_from_file_location("machine", HERE.parent.parent / "grokjax/machine.py")
machine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(machine)

path = HERE / "shipped.json"
out = {"machine": machine.fingerprint(), "cases": {}}
if len(sys.argv) > 1:
  out = json.loads(path.read_text())
  assert not machine.differences(out["machine"], machine.fingerprint()), "another machine"
for case in sys.argv[1:] or CASES:
  with tempfile.TemporaryDirectory() as tmp:
    out["cases"][case] = metrics(case, tmp)
    print(case, len(out["cases"][case]), "records", flush=True)
path.write_text(json.dumps(out))
