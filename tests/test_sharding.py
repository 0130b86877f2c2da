"""The run axis split over 4 (fake CPU) devices, in one process or two, gives the same
numbers as 1 device and as a run trained alone, bit for bit (each device runs the
one-device program on its share), and a sweep resumes on another device count."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import leaf_bytes

from grokjax import logs, rundir, sweep

ROOT = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {tests!r})
    from tiny_config import get_config
    import numpy as np
    from grokjax import devices, layout, plan, rundir, sweep
    cfg = get_config()
    cfg.sweep.seeds, cfg.sweep.train_fracs = (0, 1, 2), (0.5,)  # 3 runs on 4 devices
    s = plan.build(cfg)
    table, (runs,) = devices.device_inputs(s)
    ((init, chunk),) = devices.sweep_fns(s)
    states, metrics = chunk(table, runs, init(table, runs), 3)
    leaf = jax.tree.leaves(states.params)[0]
    # The fast layout (an accelerator's default): one partitioned program, a vmap per device.
    f_init, f_chunk = layout.make_sweep_fns(s.programs[0].static, None, None, layout.mesh())
    fast, fast_metrics = f_chunk(table, runs, f_init(table, runs), 3)
    pairs = zip(jax.tree.leaves((states, metrics)), jax.tree.leaves((fast, fast_metrics)))
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)
    sweep.run_sweep(cfg, {workdir!r}, progress=False)  # 40 steps, then 20 more: 4 -> 4 devices
    cfg.steps = 60
    sweep.run_sweep(cfg, {workdir!r}, reconfigure=True, progress=False)
    sweep.run_sweep(cfg, {grow!r}, reconfigure=True, progress=False)  # 1 -> 4 devices
    print(json.dumps(dict(devices=jax.device_count(), padded=leaf.shape[0],
                          shards=len(leaf.sharding.device_set),
                          shard_rows=leaf.addressable_shards[0].data.shape[0],
                          fast_shards=len(jax.tree.leaves(fast.params)[0].sharding.device_set),
                          fast_close=err < 1e-4)))
""")


def _three_runs(tiny, **overrides):
  return tiny(**{"sweep.seeds": (0, 1, 2), "sweep.train_fracs": (0.5,)}, **overrides)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The reference of every test: the 3 runs, 60 steps on one device in one process
  (its run directory)."""
  from conftest import tiny_config

  workdir = tmp_path_factory.mktemp("single")
  return sweep.run_sweep(_three_runs(tiny_config, steps=60), workdir, progress=False)


@pytest.mark.slow
def test_sharded_sweep_equals_unsharded(tmp_path, tiny, single):
  # 60 steps on one device; on 4 devices, resumed there after 40; and 40 steps on one
  # device resumed on 4 (its checkpoint of 3 runs read whole and padded to 4). Seed 1
  # trained alone on one device: the same metrics and final parameters, bit for bit.
  # Each device compiles its program once for the four sweeps (JAX's persistent
  # compilation cache, as on GPUs), not once per sweep.
  sweep.run_sweep(_three_runs(tiny), tmp_path / "grow", progress=False)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  script = SCRIPT.format(
    tests=str(ROOT), workdir=str(tmp_path / "sharded"), grow=str(tmp_path / "grow")
  )
  command, pipe = [sys.executable, "-c", script], subprocess.PIPE
  four = subprocess.Popen(command, stdout=pipe, stderr=pipe, text=True, env=env)
  try:
    alone = tiny(**{"sweep.seeds": (1,), "sweep.train_fracs": (0.5,), "steps": 60})
    alone = sweep.run_sweep(alone, tmp_path / "alone", progress=False)
    out, err = four.communicate(timeout=600)
  finally:
    four.kill()
  assert four.returncode == 0, err[-3000:]
  info = json.loads(out.strip().splitlines()[-1])
  assert info == dict(devices=4, padded=4, shards=4, shard_rows=1, fast_shards=4, fast_close=True)

  ref = logs.read_metrics(single / "metrics.msgpack")
  assert [r["step"] for r in ref] == list(range(0, 61, 10))
  for name in ("sharded", "grow"):
    records = logs.read_metrics(tmp_path / name / "metrics.msgpack")
    assert [r["step"] for r in records] == [r["step"] for r in ref]
    for ra, rb in zip(records, ref):
      assert ra.keys() == rb.keys()
      for metric in (n for n in ra if n != "step"):
        assert len(ra[metric]) == 3  # the padding run is not logged
        assert ra[metric] == rb[metric], (name, metric, ra["step"])
  records = logs.read_metrics(alone / "metrics.msgpack")
  assert [r["step"] for r in records] == [r["step"] for r in ref]
  for ra, rb in zip(records, ref):
    assert ra == {m: v if m == "step" else v[1:2] for m, v in rb.items()}, ra["step"]
  # A loss that moved at all: Adam's spikes amplify any difference in the last bit.
  assert ref[-1]["train_loss"][1] < 0.5 * ref[0]["train_loss"][1]
  want = leaf_bytes(rundir.load(single).params()[1])
  for workdir, k in ((tmp_path / "sharded", 1), (tmp_path / "grow", 1), (alone, 0)):
    assert leaf_bytes(rundir.load(workdir).params()[k]) == want, workdir.name


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, tiny, single):
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

  # One process, one device, 20 steps more: the first 40 as the two processes logged them.
  a = logs.read_metrics(tmp_path / "multi" / "metrics.msgpack")
  b = logs.read_metrics(single / "metrics.msgpack")
  assert [r["step"] for r in a] == [r["step"] for r in b if r["step"] <= 40]
  for ra, rb in zip(a, b):
    assert ra == rb
  # The checkpoint written by two processes (4 runs: 3 and a padding copy) loads in one.
  loaded = rundir.load_run(tmp_path / "multi", 2)
  assert loaded.accuracy("train") == pytest.approx(b[len(a) - 1]["train_acc"][2], abs=1e-6)
  # and the sweep resumes there (no padding on one device) to give the one-device numbers.
  sweep.run_sweep(_three_runs(tiny, steps=60), tmp_path / "multi", reconfigure=True, progress=False)
  assert logs.read_metrics(tmp_path / "multi" / "metrics.msgpack") == b
