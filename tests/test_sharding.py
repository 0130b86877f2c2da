"""The run axis split over 4 (fake CPU) devices, in one process or two, gives the same
numbers as 1 device."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from grokjax import logs, rundir, sweep
from grokjax.errors import UserError

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
    table, (runs,) = sweep.device_inputs(s)
    ((init, chunk),) = sweep.sweep_fns(s)
    states, _ = chunk(table, runs, init(table, runs), 3)
    leaf = jax.tree.leaves(states.params)[0]
    sweep.run_sweep(cfg, {workdir!r}, progress=False)
    print(json.dumps(dict(devices=jax.device_count(), padded=leaf.shape[0],
                          shards=len(leaf.sharding.device_set),
                          shard_rows=leaf.addressable_shards[0].data.shape[0])))
""")


@pytest.mark.slow
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


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, tiny):
  # experiments/sweep.py --distributed, as on two hosts: 2 processes x 2 CPU devices,
  # 3 runs (padded to 4), one workdir. Metrics and checkpoints equal one process's.
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  command = [
    sys.executable,
    str(ROOT.parent / "experiments" / "sweep.py"),
    f"--config={ROOT / 'tiny_config.py'}",
    "--config.sweep.seeds=0,1,2",
    "--config.sweep.train_fracs=0.5",
    f"--workdir={tmp_path / 'multi'}",
    "--distributed",
    f"--coordinator=localhost:{port}",
    "--num_processes=2",
  ]
  procs = [
    subprocess.Popen(
      [*command, f"--process_id={i}"],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in (0, 1)
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  assert "run directory" in outs[0] and "run directory" not in outs[1]  # process 0 reports

  cfg = tiny(**{"sweep.seeds": (0, 1, 2), "sweep.train_fracs": (0.5,)})
  single = sweep.run_sweep(cfg, tmp_path / "single", progress=False)
  a = logs.read_metrics(tmp_path / "multi" / "metrics.msgpack")
  b = logs.read_metrics(single / "metrics.msgpack")
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    for name in ("train_loss", "val_loss", "val_acc", "param_norm"):
      np.testing.assert_allclose(ra[name], rb[name], rtol=1e-4, atol=1e-6)
  # The checkpoint written by two processes loads in one.
  loaded = rundir.load_run(tmp_path / "multi", 2)
  assert loaded.accuracy("train") == pytest.approx(b[-1]["train_acc"][2], abs=1e-6)
  # Resuming it on one device (3 runs, no padding) is refused, with nothing touched.
  before = (tmp_path / "multi" / "metrics.msgpack").read_bytes()
  with pytest.raises(UserError, match="resume on as many devices"):
    sweep.run_sweep(cfg, tmp_path / "multi", progress=False)
  assert (tmp_path / "multi" / "metrics.msgpack").read_bytes() == before
