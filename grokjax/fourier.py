"""Fourier tools of Nanda et al. (2023) for x ± y mod p, and the built-in progress
measures (grokjax.registry.Measure), all pure functions of arrays.

A model that groks ``x ± y mod p`` embeds the tokens on a few circles, one per key
frequency k: token x sits at angle w_k x (w_k = 2πk/p); its MLP neurons each compute
a function of one frequency of (x, y), and its logits are sums of cos w_k(x ± y − z).

- ``fourier_basis(p)``: the orthonormal Fourier basis over Z_p (constant, then cos
  and sin of w_k x for k = 1..p//2); ``component_norms`` the norm of a [p, d] matrix
  along each basis vector, ``freq_norms`` per frequency (cos and sin together).
- ``neuron_frequencies``: each MLP neuron's dominant frequency over the (x, y) grid
  and the fraction of its variance that frequency explains; ``neuron_key_frequencies``
  the distinct dominant frequencies (Nanda's key frequencies).
- ``split_logits``: the logits on the (x, y) grid split, for every output class, into
  their components along cos/sin w_k(x ± y) for the key k (restricted, with Nanda's
  bias correction) and the rest (excluded).
- ``forward``: logits, the last MLP's neuron activations and its neuron-to-logit map
  W_L of any model whose logits come from a last Dense after an MLP.
- measures, per run and checkpoint (``Context`` -> scalar): the restricted loss (all
  pairs), the excluded loss (training pairs), the Gini coefficients of W_E's and
  W_L's Fourier components, the total squared weight norm, the key frequencies' share
  of the embedding, and (switched on by ``measure.sharpness``) Power et al.'s
  sharpness (``keskar_sharpness``). ``make_measure_fn`` computes them in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from grokjax import registry
from grokjax.errors import UserError

SIGNS = {"add": 1, "sub": -1}  # answer z = x + sign * y (mod p)


def check_op(op: str) -> int:
  """The sign of y in the op's answer; a UserError for ops without this Fourier view."""
  if op not in SIGNS:
    raise UserError(
      f"op {op!r} has no Fourier view here; progress measures support "
      f"{' and '.join(SIGNS)} (x ± y mod p) only"
    )
  return SIGNS[op]


# --- Fourier basis and norms -------------------------------------------------------------------


def fourier_basis(p: int) -> np.ndarray:
  """[p, p] orthonormal rows over x = 0..p-1: the constant, then cos(w_k x), sin(w_k x)
  for k = 1..(p-1)//2 (w_k = 2πk/p), and cos(πx) last when p is even."""
  x = np.arange(p)
  rows = [np.ones(p) / np.sqrt(p)]
  for k in range(1, (p - 1) // 2 + 1):
    rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
  if p % 2 == 0:
    rows.append(np.cos(np.pi * x))
  basis = np.stack(rows)
  return basis / np.linalg.norm(basis, axis=1, keepdims=True)


def row_frequency(p: int) -> np.ndarray:
  """The frequency k of each row of ``fourier_basis(p)``: 0, 1, 1, 2, 2, ..."""
  return np.concatenate([[0], np.arange(2, p + 1) // 2])


def num_frequencies(p: int) -> int:
  """Frequencies 0..p//2, the constant included."""
  return p // 2 + 1


def component_norms(m_PxD, basis_PxP=None):
  """[p]: the L2 norm of ``m``'s component along each row of the Fourier basis (over
  token axis 0): Nanda's ``(W_E @ fourier_basis.T).norm(dim=0)``; jnp in, jnp out."""
  p = m_PxD.shape[0]
  basis_PxP = fourier_basis(p) if basis_PxP is None else basis_PxP
  return jnp.sqrt(jnp.sum(jnp.square(basis_PxP @ m_PxD), axis=1))


def freq_norms(m_PxD, basis_PxP=None):
  """Per frequency k = 0..p//2, the L2 norm of ``m``'s Fourier components along
  token axis 0 (both cos and sin of k); jnp in, jnp out."""
  p = m_PxD.shape[0]
  sq_P = jnp.square(component_norms(m_PxD, basis_PxP))
  onehot_PxF = np.eye(num_frequencies(p))[row_frequency(p)]
  return jnp.sqrt(sq_P @ onehot_PxF)


def gini(x):
  """Gini coefficient of non-negative values (0: all equal, -> 1: one holds all):
  sum_i (2i - n - 1) x_(i) / (n sum x) over the ascending x_(i), Hurley and Rickard's
  (2009) sparsity measure, as Nanda et al. use it."""
  x = jnp.sort(jnp.asarray(x))
  n = x.shape[-1]
  i = jnp.arange(1, n + 1)
  return jnp.sum((2 * i - n - 1) * x, -1) / (n * jnp.maximum(jnp.sum(x, -1), 1e-30))


def key_frequencies(norms_F, max_keys: int | None = None) -> np.ndarray:
  """Key frequencies read off an embedding's ``freq_norms`` (index = frequency; the
  constant is ignored): sorted by squared norm, the ones above the largest ratio
  between neighbours among the top ``max_keys`` + 1 (default half the frequencies).
  Increasing order. grokjax's earlier rule, kept for comparison: the measures use
  ``neuron_key_frequencies``."""
  sq = np.square(np.asarray(norms_F, np.float64)[1:])
  order = np.argsort(-sq, kind="stable")
  top = sq[order]
  m = min(max_keys or max(len(sq) // 2, 1), len(sq) - 1)
  if m < 1:
    return np.sort(order + 1)
  ratios = top[:m] / np.maximum(top[1 : m + 1], 1e-30 * top[0])
  return np.sort(order[: int(np.argmax(ratios)) + 1] + 1)


def key_share(norms_F, keys) -> float:
  """The share of the squared norm (constant excluded) that the ``keys`` hold."""
  sq = np.square(np.asarray(norms_F, np.float64))
  return float(sq[list(keys)].sum() / sq[1:].sum())


# --- MLP neurons and key frequencies ----------------------------------------------------------


def neuron_frequencies(acts_NxM, p: int) -> tuple[np.ndarray, np.ndarray]:
  """Each neuron's dominant frequency and the fraction of its variance it explains
  (Nanda et al.): the activations over the p*p grid (row x * p + y) are centred over
  the grid, taken to the 2D Fourier basis, and frequency k explains the squared
  coefficients whose x and y rows are both of frequency k or the constant (its
  linear and quadratic terms). k runs over 1..p//2; the first maximum wins. A
  neuron that never varies gets frequency 0 and fraction 0. numpy float64."""
  acts = np.asarray(acts_NxM, np.float64).reshape(p, p, -1)
  acts = acts - acts.mean((0, 1))
  basis = fourier_basis(p)
  sq = np.square(np.einsum("xym,ax,by->abm", acts, basis, basis))
  total = sq.sum((0, 1))
  rf = row_frequency(p)
  frac = np.stack(
    [sq[np.ix_(m, m)].sum((0, 1)) for m in ((rf == k) | (rf == 0) for k in range(1, p // 2 + 1))]
  ) / np.where(total > 0, total, np.inf)
  return np.where(total > 0, frac.argmax(0) + 1, 0), frac.max(0)


def neuron_key_frequencies(freqs_M, max_keys: int | None = None) -> np.ndarray:
  """Nanda's key frequencies: the distinct dominant frequencies of the neurons
  (``neuron_frequencies``), in increasing order. With ``max_keys``, only that many:
  those most neurons have (ties: the lower frequency)."""
  keys, counts = np.unique(np.asarray(freqs_M)[np.asarray(freqs_M) > 0], return_counts=True)
  if max_keys is not None and len(keys) > max_keys:
    keys = np.sort(keys[np.argsort(-counts, kind="stable")[:max_keys]])
  return keys


class Forward(NamedTuple):
  """What ``forward`` reads off one model call."""

  logits: jax.Array  # [B, C]
  neurons: jax.Array  # [B, M]: the last MLP's activations at the last position
  w_l: jax.Array  # [M, C]: the neuron-to-logit map
  w_u: jax.Array  # [D, C]: the kernel of the Dense that gives the logits


def forward(model, params, inputs_BxT) -> Forward:
  """The model's logits, its last MLP's neuron activations (the input of the last
  ``nn.Dense`` before the one that gives the logits) and W_L, the linear map from
  those neurons to the logits: that Dense's kernel, then every LayerNorm called
  between it and the logits as its linear part (centring, then its scale; the
  per-example 1/std is left out), then the logit Dense's kernel. For the pre-LN
  transformer: W_out C diag(γ_final) W_U; Nanda's 1-layer model without LayerNorm:
  W_out W_U."""
  calls = []

  def record(next_fun, args, kwargs, ctx):
    out = next_fun(*args, **kwargs)
    if ctx.method_name == "__call__" and isinstance(ctx.module, (nn.Dense, nn.LayerNorm)):
      calls.append((ctx.module, ctx.module.variables.get("params", {}), args[0]))
    return out

  with nn.intercept_methods(record):
    logits = model.apply({"params": params}, inputs_BxT)
  dense = [i for i, (mod, _, _) in enumerate(calls) if isinstance(mod, nn.Dense)]
  if len(dense) < 2 or dense[-1] != len(calls) - 1:
    raise UserError(
      f"{type(model).__name__} has no MLP before a final Dense giving the logits; the "
      "progress measures need a transformer"
    )
  _, mlp, neurons = calls[dense[-2]]
  w = mlp["kernel"]
  for mod, ln, _ in calls[dense[-2] + 1 : dense[-1]]:
    if isinstance(mod, nn.LayerNorm):
      w = w - w.mean(-1, keepdims=True)
      w = w * ln["scale"] if "scale" in ln else w
  w_u = calls[dense[-1]][1]["kernel"]
  return Forward(logits, neurons if neurons.ndim == 2 else neurons[:, -1], w @ w_u, w_u)


def output_rows(model, params, inputs_BxT) -> np.ndarray:
  """[C, D]: the output layer's rows, one per answer class: the kernel of the last
  ``nn.Dense`` the model calls (the one that gives the logits), transposed. Any
  model whose logits come from a Dense (Power et al. Fig. 3's "output layer")."""
  last = []

  def record(next_fun, args, kwargs, ctx):
    if ctx.method_name == "__call__" and isinstance(ctx.module, nn.Dense):
      last[:] = [ctx.module.variables["params"]["kernel"]]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({"params": params}, inputs_BxT)
  if not last:
    raise UserError(f"{type(model).__name__} has no Dense output layer to draw")
  return np.asarray(last[0]).T


# --- restricted / excluded logits --------------------------------------------------------------


def phase_index(p: int, sign: int) -> np.ndarray:
  """[p, p] int: (x + sign * y) mod p over the grid (x, y), the answer itself."""
  x, y = np.ix_(np.arange(p), np.arange(p))
  return (x + sign * y) % p


def split_logits(logits_PxPxC, phase_PxP, key_mask_F):
  """(restricted, excluded) logits over the (x, y) grid, Nanda et al.'s: for every
  class c, ``along`` is the component of logits[:, :, c] (a vector over the p*p
  pairs) along cos and sin of w_k(x ± y) for the frequencies in ``key_mask_F`` (the
  orthogonal projection onto those 2 per key frequency, cos only for k = p/2);
  restricted = along + the logits' mean over the grid (per class: Nanda's bias
  correction), excluded = logits - along."""
  p = logits_PxPxC.shape[0]
  flat_NxC = logits_PxPxC.reshape(p * p, -1)
  # Those directions are functions of s = phase alone, each s held by p pairs: project
  # the mean logit of each s on the key frequencies' cos/sin rows of the 1-d basis.
  mean_PxC = jax.ops.segment_sum(flat_NxC, jnp.asarray(phase_PxP).ravel(), p) / p
  keep_P = jnp.asarray(key_mask_F)[row_frequency(p)] & (row_frequency(p) > 0)
  rows_PxP = fourier_basis(p) * keep_P[:, None]
  along = (rows_PxP.T @ (rows_PxP @ mean_PxC))[phase_PxP]
  return along + flat_NxC.mean(0), logits_PxPxC - along


def xent(logits_NxC, labels_N, weights_N):
  """Weighted mean cross-entropy (in the logits' dtype: float64 in the measures)."""
  logp = jax.nn.log_softmax(logits_NxC)
  nll = -jnp.take_along_axis(logp, labels_N[:, None], 1)[:, 0]
  return jnp.sum(nll * weights_N) / jnp.maximum(jnp.sum(weights_N), 1)


class Grid(NamedTuple):
  """One op's table arranged on the (x, y) grid, row x * p + y."""

  inputs: np.ndarray  # int32 [p*p, 4]
  labels: np.ndarray  # int32 [p*p]
  phase: np.ndarray  # int32 [p, p]: (x ± y) mod p
  rows: np.ndarray  # int [p*p]: the table row of each grid cell


def make_grid(inputs_Nx4, labels_N, own_N, p: int, sign: int) -> Grid:
  """The rows ``own_N`` of a table (one op, every (x, y) pair) in grid order."""
  rows = np.flatnonzero(own_N)
  if len(rows) != p * p:
    raise UserError(f"expected the full table of {p * p} rows, found {len(rows)}")
  rows = rows[np.argsort(inputs_Nx4[rows, 0] * p + inputs_Nx4[rows, 2], kind="stable")]
  return Grid(inputs_Nx4[rows], labels_N[rows], phase_index(p, sign).astype(np.int32), rows)


class Context(NamedTuple):
  """One run at one checkpoint, as a measure sees it (p*p grid rows, p classes; the
  floats in float64)."""

  params: dict
  logits: jax.Array  # [p*p, p] on the full (x, y) grid
  restricted: jax.Array  # [p*p, p]: the key frequencies' part of the logits (+ their mean)
  excluded: jax.Array  # [p*p, p]: the logits without the key frequencies' part
  labels: jax.Array  # [p*p]
  train_w: jax.Array  # [p*p] 1.0 on the run's training rows
  embed_norms: jax.Array  # [F]: the token embedding's norm per frequency
  key_mask: jax.Array  # bool [F]: the run's key frequencies
  neurons: jax.Array  # [p*p, M]: the last MLP's activations
  w_l: jax.Array  # [M, p]: the neuron-to-logit map
  embed_components: jax.Array  # [p]: W_E's norm along each Fourier basis vector
  w_l_components: jax.Array  # [p]: W_L's (over the output class)
  apply: Callable | None = None  # params -> [p*p, p] logits on the grid (float64)


def train_loss(ctx: Context, params=None):
  """The mean cross-entropy on the run's training pairs, at ``params`` (default:
  the checkpoint's own)."""
  logits = ctx.logits if params is None else ctx.apply(params)
  return xent(logits, ctx.labels, ctx.train_w)


def keskar_sharpness(loss_fn, x0_N, key, dim: int = 10, epsilon: float = 1e-3, steps: int = 10):
  """Keskar et al.'s (2017, eq. 4) sharpness of ``loss_fn`` (a function of the flat
  parameter vector) at ``x0_N``, in a random subspace as openai/grok's
  ``get_sharpness`` draws it: A⁺ [dim, N] uniform in [-1, 1] (from ``key``) with
  unit rows, A its pseudo-inverse, the box |y_i| <= epsilon (|(A⁺ x0)_i| + 1), and

    phi = 100 (max_{y in box} f(x0 + A y) - f(x0)) / (1 + f(x0)).

  The maximum is sought by ``steps`` steps of projected sign-gradient ascent (the
  box's steepest ascent) from y = 0, the first a full box-width step to the corner
  the gradient points at, each later one half the one before; the largest loss
  seen counts. (openai/grok runs scipy's L-BFGS-B for 10 iterations, and its
  ``func`` returns the loss unnegated, so it minimises where Keskar maximises.)"""
  a_plus_DxN = jax.random.uniform(key, (dim, x0_N.shape[0]), x0_N.dtype, -1.0, 1.0)
  a_plus_DxN = a_plus_DxN / jnp.linalg.norm(a_plus_DxN, axis=1, keepdims=True)
  a_NxD = jnp.linalg.pinv(a_plus_DxN)
  bound_D = epsilon * (jnp.abs(a_plus_DxN @ x0_N) + 1)
  f = lambda y_D: loss_fn(x0_N + a_NxD @ y_D)
  f0 = f(jnp.zeros(dim, x0_N.dtype))

  def ascend(carry, scale):
    y_D, best = carry
    value, grad_D = jax.value_and_grad(f)(y_D)
    y_D = jnp.clip(y_D + scale * bound_D * jnp.sign(grad_D), -bound_D, bound_D)
    return (y_D, jnp.maximum(best, value)), None

  scales = 0.5 ** jnp.arange(steps, dtype=x0_N.dtype)
  (y_D, best), _ = jax.lax.scan(ascend, (jnp.zeros(dim, x0_N.dtype), f0), scales)
  best = jnp.maximum(best, f(y_D))
  return 100 * (best - f0) / (1 + f0)


def sharpness(ctx: Context, sharpness_dim, sharpness_epsilon, sharpness_seed, **_):
  """Power et al.'s (appendix) sharpness: ``keskar_sharpness`` of the training loss
  over all parameters, its random subspace drawn from ``jax.random.key(seed)``: the
  same directions at every checkpoint and for every run of that seed, so a run
  measured alone or batched gets the same number."""
  x0_N, unravel = ravel_pytree(ctx.params)
  return keskar_sharpness(
    lambda x_N: train_loss(ctx, unravel(x_N)),
    x0_N,
    jax.random.key(sharpness_seed),
    sharpness_dim,
    sharpness_epsilon,
    SHARPNESS_STEPS,
  )


SHARPNESS_STEPS = 10  # openai/grok's maxiter
_positive = (lambda v: v > 0, "> 0")

for _measure in (
  registry.Measure("gini", lambda c: gini(c.embed_components), "Gini of W_E's Fourier components"),
  registry.Measure("gini_wl", lambda c: gini(c.w_l_components), "Gini of W_L's Fourier components"),
  registry.Measure(
    "restricted_loss",
    lambda c: xent(c.restricted, c.labels, jnp.ones_like(c.train_w)),
    "loss of the key frequencies' cos/sin w(x±y) logits alone, on all pairs",
  ),
  registry.Measure(
    "excluded_loss",
    lambda c: xent(c.excluded, c.labels, c.train_w),
    "loss without the key frequencies' cos/sin w(x±y) logits, on the training pairs",
  ),
  registry.Measure(
    "weight_norm_sq",
    lambda c: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(c.params)),
    "total squared weight norm",
  ),
  registry.Measure(
    "key_share",
    lambda c: jnp.sum(jnp.where(c.key_mask, c.embed_norms**2, 0)) / jnp.sum(c.embed_norms[1:] ** 2),
    "the key frequencies' share of the embedding's squared norm",
  ),
  registry.Measure(
    "sharpness",
    sharpness,
    "sharpness of the training loss, Keskar's phi (Power et al., appendix)",
    keys=(
      registry.Key(
        "measure.sharpness",
        False,
        "progress measures (interp) include Power et al.'s sharpness, Keskar's phi in a random "
        "subspace (10 gradient steps per run and checkpoint)",
      ),
      registry.Key(
        "measure.sharpness_dim", 10, "sharpness: the random subspace's dimension", *_positive
      ),
      registry.Key(
        "measure.sharpness_epsilon", 1e-3, "sharpness: the box's relative size", *_positive
      ),
      registry.Key(
        "measure.sharpness_seed",
        0,
        "sharpness: the random subspace's key, jax.random.key(seed)",
        lambda v: v >= 0,
        ">= 0",
      ),
    ),
    active=lambda values: values["sharpness"],
  ),
):
  registry.register(_measure)


def to_float64(tree):
  """The floating leaves of ``tree`` as float64 (trace under ``jax.enable_x64(True)``)."""
  return jax.tree.map(
    lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
  )


def make_neuron_fn(model, p: int):
  """fn(params, inputs) -> [p*p, M] float64: the last MLP's activations on the grid
  (trace and run it under ``jax.enable_x64(True)``; jit/vmap it over runs)."""
  return lambda params, inputs: forward(model, to_float64(params), inputs).neurons


def active_measures(run: dict) -> dict[str, dict]:
  """{name: its key values} of the registered measures the run gets (``active``), in
  registration order; ``run`` a runs.json entry."""
  out = {}
  for name, m in registry.MEASURES.items():
    values = m.values(run)
    if m.active(values):
      out[name] = values
  return out


def make_measure_fn(model, p: int, measures: dict[str, dict] | None = None):
  """fn(params, inputs, labels, train_w, phase, key_mask) -> {name: value} of one
  run at one checkpoint: each of ``measures`` ({name: its key values}; default:
  those a run with every key at its default gets), and the embedding's and
  unembedding's frequency norms and the embedding itself (for the figures). Trace
  and run it under ``jax.enable_x64(True)``: the parameters are cast to float64 and
  the forward pass and every measure run in float64. jit/vmap it over runs."""
  basis = fourier_basis(p)
  measures = active_measures({}) if measures is None else measures

  def fn(params, inputs, labels, train_w, phase, key_mask):
    params = to_float64(params)
    out = forward(model, params, inputs)
    logits = out.logits[:, :p]
    restricted, excluded = split_logits(logits.reshape(p, p, p), phase, key_mask)
    embed = params["Embed_0"]["embedding"][:p]
    w_l = out.w_l[:, :p]
    ctx = Context(
      params,
      logits,
      restricted.reshape(p * p, p),
      excluded.reshape(p * p, p),
      labels,
      train_w.astype(logits.dtype),
      freq_norms(embed, basis),
      key_mask,
      out.neurons,
      w_l,
      component_norms(embed, basis),
      component_norms(w_l.T, basis),
      lambda other: model.apply({"params": other}, inputs)[:, :p],
    )
    return dict(
      **{name: registry.MEASURES[name].fn(ctx, **values) for name, values in measures.items()},
      embed_norms=ctx.embed_norms,
      unembed_norms=freq_norms(out.w_u[:, :p].T, basis),
      w_l_norms=freq_norms(w_l.T, basis),
      embed=embed,
    )

  return fn


def circle_coords(embed_PxD, k: int, basis_PxP=None):
  """[p, 2]: the tokens' embeddings projected on the plane spanned by the embedding's
  cos and sin components of frequency k (orthonormalised)."""
  p = embed_PxD.shape[0]
  basis_PxP = fourier_basis(p) if basis_PxP is None else basis_PxP
  plane_2xD = basis_PxP[2 * k - 1 : 2 * k + 1] @ embed_PxD
  q, _ = np.linalg.qr(np.asarray(plane_2xD, np.float64).T)
  return np.asarray(embed_PxD, np.float64) @ q
