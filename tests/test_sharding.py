"""The run axis split over 4 (fake CPU) devices gives the same numbers as 1 device."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from grokjax import logs, sweep

ROOT = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {tests!r})
    from tiny_config import get_config
    from grokjax import sweep
    cfg = get_config()
    cfg.sweep.seeds, cfg.sweep.train_fracs = (0, 1, 2), (0.5,)  # 3 runs on 4 devices
    s = sweep.build(cfg)
    table, runs = sweep.device_inputs(s)
    init, chunk = sweep.sweep_fns(s)
    states, _ = chunk(table, runs, init(table, runs), 3)
    leaf = jax.tree.leaves(states.params)[0]
    sweep.run_sweep(cfg, {workdir!r}, progress=False)
    print(json.dumps(dict(devices=jax.device_count(), padded=leaf.shape[0],
                          shards=len(leaf.sharding.device_set),
                          shard_rows=leaf.addressable_shards[0].data.shape[0])))
""")


def test_sharded_sweep_equals_unsharded(tmp_path, tiny):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  script = SCRIPT.format(tests=str(ROOT), workdir=str(tmp_path / "sharded"))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr
  info = json.loads(out.stdout.strip().splitlines()[-1])
  assert info == dict(devices=4, padded=4, shards=4, shard_rows=1)

  single = sweep.run_sweep(
    tiny(**{"sweep.seeds": (0, 1, 2), "sweep.train_fracs": (0.5,)}),
    tmp_path / "single",
    progress=False,
  )
  a = logs.read_metrics(tmp_path / "sharded" / "metrics.msgpack")
  b = logs.read_metrics(single / "metrics.msgpack")
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    for name in ("train_loss", "val_loss", "val_acc", "param_norm"):
      assert len(ra[name]) == 3  # the padding run is not logged
      np.testing.assert_allclose(ra[name], rb[name], rtol=1e-4, atol=1e-6)
