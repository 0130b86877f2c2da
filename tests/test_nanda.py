"""Nanda et al. (2023)'s progress measures as grokjax.interp computes them, against an
independent float64 numpy implementation of the paper's formulas (its notebook's
``fft2d``, ``get_component_cos_xpy``/``sin_xpy``, ``test_logits(bias_correction=True)``,
``np.unique`` of the neurons' dominant frequencies, W_L = W_U W_out), and the paper's
qualitative result on a shrunk configs/interp.py.

The reference below reads only the parameters, Flax's own ``capture_intermediates``
and the table; it calls no grokjax helper (the functions under test are called on
the same inputs beside it).
"""

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from grokjax import fourier, interp, rundir, sweep

ROOT = Path(__file__).resolve().parents[1]
P = 13


# --- the reference: Nanda's formulas in numpy float64 ------------------------------------------


def nanda_basis(p):
  """Nanda's fourier_basis: constant, then cos, sin of 2πix/p for i = 1..p//2, normalised."""
  x = np.arange(p)
  rows = [np.ones(p)]
  for i in range(1, p // 2 + 1):
    rows += [np.cos(2 * np.pi * i * x / p), np.sin(2 * np.pi * i * x / p)]
  b = np.stack(rows)
  return b / np.linalg.norm(b, axis=1, keepdims=True)


def gelu(x):  # flax.linen.gelu (approximate=True)
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def reference_forward(model, params, inputs):
  """float64 logits [p*p, C] and the last block's MLP activations [p*p, 4d]."""
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, capture_intermediates=True))
    logits, state = apply(p64, jnp.asarray(inputs))
    inter = state["intermediates"]
    last = max(k for k in inter if k.startswith("Block_"))
    pre = np.asarray(inter[last]["Dense_0"]["__call__"][0], np.float64)
  assert logits.dtype == jnp.float64 and pre.dtype == np.float64
  return np.asarray(logits, np.float64), gelu(pre[:, -1]), last


def fft2d(acts, p, basis):
  return np.einsum("xym,fx,gy->fgm", acts.reshape(p, p, -1), basis, basis)


def reference_key_freqs(neurons, p, basis):
  """Nanda's calculate_key_freqs: centre, 2D Fourier, each neuron's frequency whose
  [0, 2f-1, 2f] x [0, 2f-1, 2f] block explains most of its variance; np.unique."""
  f = fft2d(neurons - neurons.mean(0), p, basis)
  fracs = []
  for freq in range(1, p // 2 + 1):
    idx = [0, 2 * freq - 1, 2 * freq]
    fracs.append((f[np.ix_(idx, idx)] ** 2).sum((0, 1)) / (f**2).sum((0, 1)))
  freqs = np.argmax(np.stack(fracs), 0) + 1
  return np.unique(freqs), freqs


def trig_components(logits, freqs, p, basis):
  """Sum over freqs of get_component_cos_xpy + get_component_sin_xpy (per class)."""
  out = np.zeros_like(logits)
  for f in freqs:
    c, s = basis[2 * f - 1], basis[2 * f]
    cos_xpy = (np.outer(c, c) - np.outer(s, s)).ravel() / np.sqrt(2)
    sin_xpy = (np.outer(s, c) + np.outer(c, s)).ravel() / np.sqrt(2)
    out += np.outer(cos_xpy, cos_xpy @ logits) + np.outer(sin_xpy, sin_xpy @ logits)
  return out


def cross_entropy(logits, labels):
  z = logits - logits.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -logp[np.arange(len(labels)), labels].mean()


def gini_mad(x):
  """Gini by the mean absolute difference (a different formula from the library's)."""
  return np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) * x.sum())


def reference_measures(model, params, grid_inputs, labels, train, keys, p):
  basis = nanda_basis(p)
  logits, neurons, last = reference_forward(model, params, grid_inputs)
  logits = logits[:, :p]
  trig = trig_components(logits, keys, p, basis)
  restricted = trig + (logits - trig).mean(0)  # test_logits' bias_correction
  excluded = logits - trig
  w_e = np.asarray(params["Embed_0"]["embedding"], np.float64)[:p]  # [p, d]
  w_out = np.asarray(params[last]["Dense_1"]["kernel"], np.float64)  # [M, d]
  gamma = np.asarray(params["LayerNorm_0"]["scale"], np.float64)  # the final LayerNorm
  w_u = np.asarray(params["unembed"]["kernel"], np.float64)[:, :p]  # [d, p]
  d = w_out.shape[1]
  w_l = (w_out @ (np.eye(d) - 1 / d) @ np.diag(gamma) @ w_u).T  # [p, M]: W_U W_out
  return dict(
    restricted_loss=cross_entropy(restricted, labels),
    excluded_loss=cross_entropy(excluded[train], labels[train]),
    gini=gini_mad(np.linalg.norm(w_e.T @ basis.T, axis=0)),  # (W_E @ basis.T).norm(dim=0)
    gini_wl=gini_mad(np.linalg.norm(basis @ w_l, axis=1)),  # (basis @ W_L).norm(dim=1)
    neurons=neurons,
  )


# --- (a) the library against the reference -----------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """x + y mod 13, a 2-layer width-32 transformer trained 300 steps, 4 checkpoints."""
  cfg = tiny_config(
    **{
      "p": P,
      "steps": 300,
      "eval_every": 100,
      "checkpoint_every": 100,
      "checkpoint_keep": 10,
      "model.num_layers": 2,
      "sweep.seeds": (0,),
      "sweep.train_fracs": (0.6,),
    }
  )
  workdir = tmp_path_factory.mktemp("nanda") / "run"
  sweep.run_sweep(cfg, workdir, progress=False)
  rd = rundir.load(workdir)
  return rd, interp.compute(rd)


def test_measures_match_a_numpy_float64_reference(small):
  rd, m = small
  sw = rd.sweep()
  table = sw.table
  # the (x, y) grid, row x * p + y, read off the table
  order = {(int(a), int(b)): i for i, (a, _, b, _) in enumerate(table.inputs)}
  rows = np.asarray([order[(x, y)] for x in range(P) for y in range(P)])
  inputs, labels = table.inputs[rows], np.asarray([(x + y) % P for x in range(P) for y in range(P)])
  assert (table.labels[rows] == labels).all()
  train = sw.train_masks[0][rows]
  model = sw.model(0)
  assert m.steps.tolist() == [0, 100, 200, 300]
  # key frequencies: Nanda's rule on the last checkpoint's neurons
  last = reference_measures(model, rd.params(300, sw)[0], inputs, labels, train, [1], P)
  keys, freqs = reference_key_freqs(last["neurons"], P, nanda_basis(P))
  assert m.keys[0].tolist() == keys.tolist() and len(keys) >= 1
  np.testing.assert_array_equal(m.neuron_freqs[0], freqs)
  for c, step in enumerate(m.steps):
    ref = reference_measures(model, rd.params(int(step), sw)[0], inputs, labels, train, keys, P)
    for name in ("restricted_loss", "excluded_loss", "gini", "gini_wl"):
      assert m.values[name].dtype == np.float64
      np.testing.assert_allclose(m.values[name][c, 0], ref[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_split_logits_on_a_subset_of_frequencies(op):
  """Restricted/excluded logits of random logits, keys a strict subset, against the
  explicit p*p directions (for sub: cos/sin w(x - y) by the same trig identities)."""
  p, keys = 13, [2, 5]
  sign = fourier.check_op(op)
  basis = nanda_basis(p)
  logits = np.random.default_rng(0).normal(size=(p * p, p)) * 3
  trig = np.zeros_like(logits)
  for f in keys:
    c, s = basis[2 * f - 1], basis[2 * f]
    cos_xy = (np.outer(c, c) - sign * np.outer(s, s)).ravel() / np.sqrt(2)
    sin_xy = (np.outer(s, c) + sign * np.outer(c, s)).ravel() / np.sqrt(2)
    trig += np.outer(cos_xy, cos_xy @ logits) + np.outer(sin_xy, sin_xy @ logits)
  mask = np.isin(np.arange(p // 2 + 1), keys)
  with jax.enable_x64(True):
    phase = fourier.phase_index(p, sign)
    restricted, excluded = fourier.split_logits(jnp.asarray(logits.reshape(p, p, p)), phase, mask)
    assert restricted.dtype == jnp.float64
  np.testing.assert_allclose(restricted.reshape(p * p, p), trig + (logits - trig).mean(0), 1e-10)
  np.testing.assert_allclose(excluded.reshape(p * p, p), logits - trig, 1e-10, 1e-12)


def test_neuron_frequencies_of_planted_neurons():
  """Neurons built from one frequency each (a product of its cos/sin in x and y, plus
  a linear term and noise) get that frequency, as Nanda's rule finds it."""
  p, planted = 13, [3, 3, 5, 1, 6, 5]
  rng = np.random.default_rng(0)
  w = 2 * np.pi * np.arange(p) / p
  x, y = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  acts = np.stack(
    [
      np.cos(w[k] * x + rng.uniform(0, 6)) * np.cos(w[k] * y + rng.uniform(0, 6))
      + 0.3 * np.sin(w[k] * x)
      + 0.05 * rng.normal(size=(p, p))
      for k in planted
    ],
    -1,
  ).reshape(p * p, -1)
  freqs, frac = fourier.neuron_frequencies(acts, p)
  keys, ref = reference_key_freqs(acts, p, nanda_basis(p))
  assert freqs.tolist() == ref.tolist() == planted
  assert fourier.neuron_key_frequencies(freqs).tolist() == keys.tolist() == [1, 3, 5, 6]
  assert fourier.neuron_key_frequencies(freqs, max_keys=2).tolist() == [3, 5]
  assert (frac > 0.9).all()


def test_summary_has_the_neuron_frequencies(small):
  rd, m = small
  (s,) = interp.summary(rd, m)
  assert sum(s["neuron_freq_counts"].values()) == 4 * 32  # every neuron of the last MLP
  assert set(s["neuron_freq_counts"]) == set(s["key_frequencies"])
  assert sorted(map(int, s["gini_wl_at"])) == [0, 100, 200, 300]
  assert 0 < s["neuron_frac_explained_median"] <= 1


# --- (b) Nanda's qualitative result --------------------------------------------------------------


@pytest.mark.slow
def test_restricted_loss_leads_and_excluded_loss_rises(tmp_path):
  """configs/interp.py shrunk to train in well under a minute (one seed, width 64,
  lr 3e-3, 900 steps; it groks by ~700): during circuit formation (train 99% to val
  99%) the restricted loss is far below the validation loss and reaches each level
  well before it; the excluded loss rises while the training loss stays low. Measured
  (two versions of the training code, whose last checkpoints gave 6 and 5 key
  frequencies): restricted below 1.5/1.0/0.5 at steps 101-200/301-414/414-520,
  validation at 396/497/520; val/restricted 1.9-3.6 during formation; excluded
  0.67-0.88 -> 2.6."""
  cfg = runpy.run_path(str(ROOT / "configs" / "interp.py"))["get_config"]()
  cfg.interp = False
  cfg.steps = 900
  cfg.model.width = 64
  cfg.optim.lr = 3e-3
  cfg.sweep.seeds = (0,)
  sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  rd = rundir.load(tmp_path / "run")
  m = interp.compute(rd)
  (s,) = interp.summary(rd, m)
  t_train, t_val = s["train_step"], s["val_step"]
  assert t_train is not None and t_val is not None, s
  evals, val = rd.metrics["step"], rd.metrics["val_loss"][:, 0]
  train = rd.metrics["train_loss"][:, 0]
  val_at = lambda step: val[np.searchsorted(evals, step)]
  r, e = m.values["restricted_loss"][:, 0], m.values["excluded_loss"][:, 0]
  forming = (m.steps >= t_train) & (m.steps < t_val)
  assert forming.sum() >= 3
  # the restricted loss sits far below the validation loss while the circuit forms ...
  ratio = [val_at(step) / r[c] for c, step in zip(np.flatnonzero(forming), m.steps[forming])]
  assert min(ratio) > 1.5 and np.median(ratio) > 1.75, ratio
  # ... and falls first: below 1.5 well before the validation loss, below 1 and 0.5 no later
  for level, lead in ((1.5, 150), (1.0, 0), (0.5, 0)):
    t_r = m.steps[np.flatnonzero(r < level)[0]]
    t_v = evals[np.flatnonzero(val < level)[0]]
    assert t_r + lead <= t_v, (level, t_r, t_v)
  # the excluded loss rises: memorisation lives outside the key frequencies
  first = np.flatnonzero(m.steps >= t_train)[0]
  done = np.flatnonzero(m.steps >= t_val)[0]
  assert e[done] > 2 * e[first], (e[first], e[done])
  assert train[np.searchsorted(evals, m.steps[done])] < 0.1
  # and the circuit is sparse in the Fourier basis: both Gini coefficients grew
  g, gwl = m.values["gini"][:, 0], m.values["gini_wl"][:, 0]
  assert g[-1] > 3 * g[0] and gwl[-1] > 3 * gwl[0]
