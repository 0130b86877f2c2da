"""grokjax.fourier and grokjax.interp: Fourier basis, key frequencies, the logit split, figures
(tests/test_nanda.py checks the measures against a numpy float64 reference)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logits_of, tiny_config

from grokjax import config as config_lib
from grokjax import fourier, interp, plots, report, rundir
from grokjax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("p", [31, 12])
def test_fourier_basis_is_orthonormal(p):
  basis = fourier.fourier_basis(p)
  np.testing.assert_allclose(basis @ basis.T, np.eye(p), atol=1e-12)
  assert fourier.row_frequency(p).max() == p // 2 == fourier.num_frequencies(p) - 1


def _synthetic_embedding(p, amplitudes, width=64, noise=0.02, seed=0):
  rng = np.random.default_rng(seed)
  x = np.arange(p)
  e = noise * rng.normal(size=(p, width))
  for k, a in amplitudes.items():
    u, v = rng.normal(size=(2, width)) / np.sqrt(width)
    e += a * (
      np.outer(np.cos(2 * np.pi * k * x / p), u) + np.outer(np.sin(2 * np.pi * k * x / p), v)
    )
  return e


@pytest.mark.parametrize(
  "amplitudes", [{3: 1.0, 7: 0.7, 11: 0.5}, {5: 1.0}, {1: 1, 2: 1, 9: 1, 14: 1}]
)
def test_key_frequencies_of_a_synthetic_embedding(amplitudes):
  e = _synthetic_embedding(31, amplitudes)
  norms = np.asarray(fourier.freq_norms(jnp.asarray(e)))
  assert norms.shape == (16,)
  assert fourier.key_frequencies(norms).tolist() == sorted(amplitudes)
  assert fourier.key_share(norms, sorted(amplitudes)) > 0.95


def test_freq_norms_match_the_matrix_norm():
  e = np.random.default_rng(1).normal(size=(13, 8))
  norms = np.asarray(fourier.freq_norms(jnp.asarray(e)))
  np.testing.assert_allclose(np.sum(norms**2), np.sum(e**2), rtol=1e-5)


def test_gini():
  assert abs(float(fourier.gini(jnp.ones(10)))) < 1e-6
  np.testing.assert_allclose(float(fourier.gini(jnp.eye(10)[3])), 0.9, rtol=1e-6)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_restricted_and_excluded_split_the_logits(op):
  p, keys = 11, [2, 5]
  sign = fourier.check_op(op)
  phase = fourier.phase_index(p, sign)
  mask = np.isin(np.arange(fourier.num_frequencies(p)), keys)
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(p, p, p)), jnp.float32)
  mean = logits.mean((0, 1))
  restricted, excluded = fourier.split_logits(logits, phase, mask)
  # restricted = the key part + the mean over the grid (Nanda's bias correction); excluded: rest
  np.testing.assert_allclose(restricted + excluded, logits + mean, atol=1e-5)
  # restricting is a projection (plus the mean, which has no key part): again, nothing changes;
  # the excluded logits have no key part left
  np.testing.assert_allclose(
    fourier.split_logits(restricted, phase, mask)[0], restricted, atol=1e-5
  )
  again, rest = fourier.split_logits(excluded, phase, mask)
  np.testing.assert_allclose(again, np.broadcast_to(mean, again.shape), atol=1e-5)
  np.testing.assert_allclose(rest, excluded, atol=1e-5)
  # logits made of cos/sin w_k(x ± y - z) for the key k are kept whole, and nothing is excluded
  x, y, z = np.ix_(np.arange(p), np.arange(p), np.arange(p))
  w = 2 * np.pi * np.asarray(keys) / p
  ideal = sum(np.cos(wk * (x + sign * y - z)) + 0.5 * np.sin(wk * (x + sign * y - z)) for wk in w)
  restricted, excluded = fourier.split_logits(jnp.asarray(ideal, jnp.float32), phase, mask)
  np.testing.assert_allclose(restricted, ideal, atol=1e-5)
  np.testing.assert_allclose(excluded, 0, atol=1e-5)
  # ... and argmax z of cos(w_k(x ± y - z)) is the answer
  assert int(np.argmax(ideal[3, 9])) == (3 + sign * 9) % p == phase[3, 9]
  # a frequency outside the keys is all excluded
  other = np.cos(2 * np.pi * 3 * (x + sign * y - z) / p)
  restricted, excluded = fourier.split_logits(jnp.asarray(other, jnp.float32), phase, mask)
  np.testing.assert_allclose(excluded, other, atol=1e-5)


def test_forward_reads_the_last_mlp():
  """fourier.forward on the transformer: the last block's MLP activations at the last
  position, and W_L = W_out C diag(γ) W_U (C centres over the residual width)."""
  from grokjax.model import Transformer

  model = Transformer(10, 7, num_layers=2, width=16, num_heads=2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 7, size=(5, 4)), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  out = fourier.forward(model, params, tokens)
  assert out.logits.shape == (5, 7) and out.neurons.shape == (5, 64) and out.w_l.shape == (64, 7)
  np.testing.assert_allclose(out.logits, logits_of(model, params, tokens), atol=1e-6)
  w_out = params["Block_1"]["Dense_1"]["kernel"]
  c = np.eye(16) - 1 / 16
  gamma = np.diag(params["LayerNorm_0"]["scale"])
  np.testing.assert_allclose(out.w_l, w_out @ c @ gamma @ params["unembed"]["kernel"], atol=1e-6)
  _, state = model.apply({"params": params}, tokens, capture_intermediates=True)
  pre = state["intermediates"]["Block_1"]["Dense_0"]["__call__"][0][:, -1]
  np.testing.assert_allclose(out.neurons, jax.nn.gelu(pre), atol=1e-6)


@pytest.mark.parametrize("op", ["s5", "cubic", "mul", "div"])
def test_ops_without_the_fourier_view_are_refused(op):
  with pytest.raises(UserError, match="no Fourier view"):
    fourier.check_op(op)


def _tiny_model(p=5, width=16):
  from grokjax import data
  from grokjax.model import Transformer

  table = data.make_table("add", p)
  model = Transformer(table.vocab_size, p, num_layers=1, width=width, num_heads=2)
  grid = fourier.make_grid(
    np.asarray(table.inputs), np.asarray(table.labels), np.ones(p * p, bool), p, 1
  )
  params = jax.jit(model.init)(jax.random.key(0), grid.inputs[:1])["params"]
  return model, grid, params


def test_sharpness_against_a_direct_computation():
  """Keskar's phi of the tiny model's training loss: the measure (a jitted ascent in
  float64) against numpy, which draws the same subspace from the same key and takes
  the largest loss over the box's 2^dim corners (the box is small, so the loss is
  nearly linear in it and its maximum sits at a corner)."""
  from jax.flatten_util import ravel_pytree

  p, dim, eps, seed = 5, 4, 1e-2, 3
  model, grid, params = _tiny_model(p)
  train_w = (np.arange(p * p) % 3 != 0).astype(np.float64)
  args = (params, grid.inputs, grid.labels, train_w, grid.phase, np.zeros(p // 2 + 1, bool))
  values = dict(sharpness=True, sharpness_dim=dim, sharpness_epsilon=eps, sharpness_seed=seed)
  with jax.enable_x64(True):
    phi = lambda values: float(
      jax.jit(fourier.make_measure_fn(model, p, {"sharpness": values}))(*args)["sharpness"]
    )
    got = phi(values)
    again = phi(values)
    other = phi(dict(values, sharpness_seed=seed + 1))
    # numpy: the same A+ from the same key, then every corner of the box
    x0, unravel = ravel_pytree(fourier.to_float64(params))
    x0 = np.asarray(x0)
    a_plus = np.asarray(
      jax.random.uniform(jax.random.key(seed), (dim, len(x0)), jnp.float64, -1, 1)
    )

    apply = jax.jit(model.apply)  # one program for every corner, not one per operation

    def loss(x):
      logits = np.asarray(apply({"params": unravel(jnp.asarray(x))}, grid.inputs), np.float64)
      logits = logits[:, :p] - logits[:, :p].max(1, keepdims=True)
      logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
      return -(logp[np.arange(p * p), grid.labels] * train_w).sum() / train_w.sum()

  a_plus = a_plus / np.linalg.norm(a_plus, axis=1, keepdims=True)
  a = np.linalg.pinv(a_plus)
  bound = eps * (np.abs(a_plus @ x0) + 1)
  corners = np.array(np.meshgrid(*[[-1, 1]] * dim)).reshape(dim, -1).T * bound
  with jax.enable_x64(True):
    f0 = loss(x0)
    top = max(loss(x0 + a @ y) for y in corners)
  want = 100 * (top - f0) / (1 + f0)
  assert want > 0 and got == pytest.approx(want, rel=1e-3), (got, want)
  assert again == got  # a function of its key: the same number every time
  assert other != pytest.approx(got, rel=1e-3)  # another key, another subspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from grokjax import sweep

  cfg = tiny_config(
    **{
      "sweep.train_fracs": (0.8,),
      "checkpoint_every": 10,
      "checkpoint_keep": 10,
      "measure.sharpness": True,
    }
  )
  workdir = tmp_path_factory.mktemp("interp") / "run"
  sweep.run_sweep(cfg, workdir, progress=False)
  return workdir


@pytest.mark.slow
def test_write_figures(trained):
  paths = report.write_measures(rundir.load(trained))
  names = sorted(p.name for p in paths)
  assert names == sorted(
    [f"interp_run{k}_{f}.png" for k in (0, 1) for f in plots.INTERP_FIGURES] + ["interp.json"]
  )
  summ = json.loads((trained / "interp.json").read_text())
  assert [s["run"] for s in summ] == [0, 1]
  assert sorted(map(int, summ[0]["gini_at"])) == [0, 10, 20, 30, 40]
  m = interp.compute(rundir.load(trained))
  assert m.values["embed_norms"].shape == (5, 2, 4)
  # step 0 is the initialisation: no (x + y) structure, so the restricted logits (a part
  # of the logits) guess no better than chance, log p, and not much worse than the whole
  # logits do on all pairs (p = 7 has three frequencies; all can be key ones)
  r0 = m.values["restricted_loss"][0]
  rd = rundir.load(trained)
  full0 = 0.8 * rd.metrics["train_loss"][0] + 0.2 * rd.metrics["val_loss"][0]
  assert (r0 > np.log(7) - 0.01).all() and (r0 < full0 + 0.1).all(), (r0, full0)
  # the sharpness (measure.sharpness=True): at every checkpoint, with its correlation
  assert sorted(map(int, summ[0]["sharpness_at"])) == [0, 10, 20, 30, 40]
  assert np.isfinite(m.values["sharpness"]).all() and (m.values["sharpness"] >= 0).all()
  for s in summ:
    corr = s["val_acc_correlation"]["sharpness"]["spearman"]
    assert corr is None or -1 <= corr <= 1
    assert (
      list(s["val_acc_at"].values())[-1] == rundir.load(trained).metrics["val_acc"][-1, s["run"]]
    )
  fig = plots.interp_measures(rundir.load(trained), m, 0, summ[0])
  assert len(fig.axes) == 5 and fig.axes[4].get_ylabel() == "sharpness"


def _script(*args):
  return subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "interp.py"), *map(str, args)],
    capture_output=True,
    text=True,
  )


def test_script_user_errors(tmp_path):
  out = _script(tmp_path / "missing")
  assert out.returncode == 2 and out.stderr.startswith("error: ") and "does not exist" in out.stderr
  cfg = config_lib.default_config()
  cfg.op, cfg.p = "cubic", 7
  (tmp_path / "config.json").write_text(config_lib.to_json(cfg))
  (tmp_path / "runs.json").write_text(json.dumps([dict(index=0, op="cubic", p=7, seed=0)]))
  out = _script(tmp_path)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
    "error: op 'cubic' has no Fourier view here; progress measures support add and sub "
    "(x ± y mod p) only"
  ]
