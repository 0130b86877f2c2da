"""docs/extending.md's python block, run exactly as written (in a fresh process, so
its registrations stay there), then checked: the new method and model swept beside
the baseline, and a run of the batched program equal to the same run trained alone."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"

CHECK = """
import json
from grokjax import logs

s = plan.build(cfg)
i = next(k for k, r in enumerate(s.runs)
         if (r["model"], r["sign_beta"], r["seed"]) == ("embed_mlp", 0.5, 1))
alone = cfg.copy_and_resolve_references()
alone.sweep.model, alone.sweep.sign_beta, alone.sweep.seeds = ("embed_mlp",), (0.5,), (1,)
alone_dir = sweep.run_sweep(alone, "runs/alone", progress=False)
print(json.dumps(dict(
  i=i,
  programs=[[int(k) for k in p.runs] for p in s.programs],
  runs=json.loads((workdir / "runs.json").read_text()),
  batched=logs.read_metrics(workdir / "metrics.msgpack"),
  alone=logs.read_metrics(alone_dir / "metrics.msgpack"),
)))
"""


def doc_block() -> str:
  (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
  return block


@pytest.mark.slow
def test_extending_block_runs_and_a_batched_run_equals_the_run_alone(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", doc_block() + CHECK],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert "sign_beta" in out.stdout and "embed_mlp" in out.stdout  # the results table
  runs = result["runs"]
  assert {(r["model"], r["sign_beta"]) for r in runs} == {
    (m, b) for m in ("transformer", "embed_mlp") for b in (0.0, 0.5)
  }
  # one program per model and per set of methods: the filter only where it is on
  programs = result["programs"]
  assert len(programs) == 4
  for members in programs:
    assert len({(runs[k]["model"], runs[k]["sign_beta"]) for k in members}) == 1
  # the filter changes training: same model and seed, different curves
  last = result["batched"][-1]["train_loss"]
  pairs = [
    (a, b)
    for a in range(8)
    for b in range(8)
    if runs[a]["seed"] == runs[b]["seed"]
    and runs[a]["model"] == runs[b]["model"]
    and runs[a]["sign_beta"] < runs[b]["sign_beta"]
  ]
  assert pairs and all(last[a] != last[b] for a, b in pairs)
  # run i of the batched program equals run i trained alone
  i = result["i"]
  for batched, alone in zip(result["batched"], result["alone"], strict=True):
    assert batched["step"] == alone["step"]
    for name in ("train_loss", "val_loss", "train_acc", "val_acc", "param_norm"):
      np.testing.assert_allclose(batched[name][i], alone[name][0], rtol=1e-5, atol=1e-7)
  assert (tmp_path / "runs" / "extending" / "figures" / "curves.png").exists()


# --- a progress measure of the user's own (registry.Measure) ---------------------------------


@pytest.fixture
def user_measure():
  """Registers ``logit_scale`` (a measure with a key, as a user's file would) and
  removes it, and its key, again afterwards."""
  import jax.numpy as jnp

  from grokjax import registry
  from grokjax.registry import Key, Measure

  before = dict(registry.MEASURES)
  measure = registry.register(
    Measure(
      "logit_scale",
      lambda ctx, scale: scale * jnp.mean(jnp.abs(ctx.logits)),
      "scale x mean |logit| on the grid",
      keys=(Key("measure.scale", 1.0, "the user measure's factor"),),
    )
  )
  yield measure
  registry.MEASURES.clear()
  registry.MEASURES.update(before)


def test_a_measure_key_reaches_the_measure(user_measure):
  import jax
  import numpy as np

  from grokjax import data, fourier
  from grokjax.model import Transformer

  p = 5
  table = data.make_table("add", p)
  model = Transformer(table.vocab_size, p, num_layers=1, width=16, num_heads=2)
  grid = fourier.make_grid(
    np.asarray(table.inputs), np.asarray(table.labels), np.ones(p * p, bool), p, 1
  )
  params = jax.jit(model.init)(jax.random.key(0), grid.inputs[:1])["params"]
  args = (params, grid.inputs, grid.labels, np.ones(p * p), grid.phase, np.zeros(p // 2 + 1, bool))
  with jax.enable_x64(True):
    values = {
      scale: float(
        jax.jit(fourier.make_measure_fn(model, p, {"logit_scale": dict(scale=scale)}))(*args)[
          "logit_scale"
        ]
      )
      for scale in (1.0, 3.0)
    }
  assert values[1.0] > 0 and values[3.0] == pytest.approx(3 * values[1.0], rel=1e-12)
  # a run's values come from its runs.json entry (the default where a run has none)
  assert fourier.active_measures({"scale": 3.0})["logit_scale"] == {"scale": 3.0}
  assert fourier.active_measures({})["logit_scale"] == {"scale": 1.0}
  assert "sharpness" not in fourier.active_measures({})  # off unless measure.sharpness


@pytest.mark.slow
def test_a_user_measure_reaches_interp_json_and_the_figure(user_measure, tmp_path):
  from conftest import tiny_config

  from grokjax import interp, plots, report, rundir, sweep

  cfg = tiny_config(
    **{"sweep.train_fracs": (0.8,), "sweep.seeds": (0,), "steps": 20, "checkpoint_every": 10}
  )
  cfg.sweep.scale = (1.0, 3.0)  # the measure's key is a sweep axis like any other
  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  rd = rundir.load(workdir)
  assert [r["scale"] for r in rd.runs] == [1.0, 3.0]
  paths = report.write_measures(rd)
  summ = json.loads((workdir / "interp.json").read_text())
  at = [s["logit_scale_at"] for s in summ]
  assert list(at[0]) == ["0", "10", "20"]
  # the two runs trained identically (a measure key never reaches training) and differ
  # only by the measure's factor
  for step in at[0]:
    assert at[1][step] == pytest.approx(3 * at[0][step], rel=1e-4)
  assert set(summ[0]["val_acc_correlation"]) >= {"logit_scale", "gini", "restricted_loss"}
  # the figure has a panel for it, after the four built-in ones
  m = interp.compute(rd)
  fig = plots.interp_measures(rd, m, 0, interp.summary(rd, m)[0])
  assert len(fig.axes) == 5 and fig.axes[4].get_ylabel() == "logit_scale"
  (line,) = fig.axes[4].get_lines()
  assert line.get_label().startswith("scale x mean |logit| on the grid")
  assert np.allclose(line.get_ydata(), m.values["logit_scale"][:, 0])
  assert workdir / "figures" / "interp_run1_measures.png" in paths
