"""Fourier tools of Nanda et al. (2023) for x ± y mod p, and the built-in progress
measures (grokjax.registry.Measure), all pure functions of arrays.

A model that groks ``x ± y mod p`` embeds the tokens on a few circles, one per key
frequency k: token x sits at angle w_k x (w_k = 2πk/p).

- ``fourier_basis(p)``: the orthonormal Fourier basis over Z_p (constant, then cos
  and sin of w_k x for k = 1..p//2); ``freq_norms`` the norm of a [p, d] matrix
  (the token embedding, the unembedding's columns) per frequency.
- ``key_frequencies``: the frequencies above the largest gap of the sorted norms.
- ``split_logits``: the logits on the full (x, y) grid split into their components
  along cos/sin w_k(x ± y − z) for the key k (restricted) and the rest (excluded).
- measures, per run and checkpoint (``Context`` -> scalar): the Gini coefficient of
  the embedding's frequency norms, the restricted loss (full table), the excluded
  loss (training rows), the total squared weight norm, the key frequencies' share.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def freq_norms(m_PxD, basis_PxP=None):
  """Per frequency k = 0..p//2, the L2 norm of ``m``'s Fourier components along
  token axis 0 (both cos and sin of k); jnp in, jnp out."""
  p = m_PxD.shape[0]
  basis_PxP = fourier_basis(p) if basis_PxP is None else basis_PxP
  sq_P = jnp.sum(jnp.square(basis_PxP @ m_PxD), axis=1)
  onehot_PxF = np.eye(num_frequencies(p))[row_frequency(p)]
  return jnp.sqrt(sq_P @ onehot_PxF)


def gini(x):
  """Gini coefficient of non-negative values (0: all equal, -> 1: one holds all)."""
  x = jnp.sort(jnp.asarray(x))
  n = x.shape[-1]
  i = jnp.arange(1, n + 1)
  return jnp.sum((2 * i - n - 1) * x, -1) / (n * jnp.maximum(jnp.sum(x, -1), 1e-30))


def key_frequencies(norms_F, max_keys: int | None = None) -> np.ndarray:
  """The key frequencies of a trained model from its embedding's ``freq_norms``
  (index = frequency; the constant is ignored): sorted by squared norm, the ones
  above the largest ratio between neighbours among the top ``max_keys`` + 1
  (default half the frequencies). Returns them in increasing order."""
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


# --- restricted / excluded logits --------------------------------------------------------------


def phase_index(p: int, sign: int) -> np.ndarray:
  """[p, p, p] int: (x + sign * y - z) mod p over the grid (x, y, z)."""
  x, y, z = np.ix_(np.arange(p), np.arange(p), np.arange(p))
  return (x + sign * y - z) % p


def split_logits(logits_PxPxP, phase_PxPxP, key_mask_F):
  """(restricted, excluded) logits over the full grid (x, y, z): restricted keeps
  only the components along cos and sin of w_k(x ± y − z) for the frequencies in
  ``key_mask_F`` (the orthogonal projection onto them); excluded is the rest, so
  restricted + excluded == logits."""
  p = logits_PxPxP.shape[0]
  # Those directions depend on the grid only through s = phase; project the mean
  # logit of each s on the key frequencies' cos/sin rows of the 1-d basis.
  mean_P = jax.ops.segment_sum(logits_PxPxP.ravel(), phase_PxPxP.ravel(), p) / p**2
  basis = fourier_basis(p)
  keep_P = jnp.asarray(key_mask_F)[row_frequency(p)] & (row_frequency(p) > 0)
  rows = basis * keep_P[:, None]
  restricted = (rows.T @ (rows @ mean_P))[phase_PxPxP]
  return restricted, logits_PxPxP - restricted


def _xent(logits_NxC, labels_N, weights_N):
  logp = jax.nn.log_softmax(logits_NxC)
  nll = -jnp.take_along_axis(logp, labels_N[:, None], 1)[:, 0]
  return jnp.sum(nll * weights_N) / jnp.maximum(jnp.sum(weights_N), 1)


class Grid(NamedTuple):
  """One op's table arranged on the (x, y) grid, row x * p + y."""

  inputs: np.ndarray  # int32 [p*p, 4]
  labels: np.ndarray  # int32 [p*p]
  phase: np.ndarray  # int32 [p, p, p]
  rows: np.ndarray  # int [p*p]: the table row of each grid cell


def make_grid(inputs_Nx4, labels_N, own_N, p: int, sign: int) -> Grid:
  """The rows ``own_N`` of a table (one op, every (x, y) pair) in grid order."""
  rows = np.flatnonzero(own_N)
  if len(rows) != p * p:
    raise UserError(f"expected the full table of {p * p} rows, found {len(rows)}")
  rows = rows[np.argsort(inputs_Nx4[rows, 0] * p + inputs_Nx4[rows, 2], kind="stable")]
  return Grid(inputs_Nx4[rows], labels_N[rows], phase_index(p, sign).astype(np.int32), rows)


class Context(NamedTuple):
  """One run at one checkpoint, as a measure sees it (p*p grid rows, p classes)."""

  params: dict
  logits: jax.Array  # [p*p, p] on the full (x, y) grid
  restricted: jax.Array  # [p*p, p]: the key frequencies' part of the logits
  excluded: jax.Array  # [p*p, p]: the rest
  labels: jax.Array  # [p*p]
  train_w: jax.Array  # [p*p] 1.0 on the run's training rows
  embed_norms: jax.Array  # [F]: the token embedding's norm per frequency
  key_mask: jax.Array  # bool [F]: the run's key frequencies


for _measure in (
  registry.Measure("gini", lambda c: gini(c.embed_norms[1:]), "Gini of embedding freq norms"),
  registry.Measure(
    "restricted_loss",
    lambda c: _xent(c.restricted, c.labels, jnp.ones_like(c.train_w)),
    "loss of the key frequencies' logits alone, on the full table",
  ),
  registry.Measure(
    "excluded_loss",
    lambda c: _xent(c.excluded, c.labels, c.train_w),
    "loss without the key frequencies' logits, on the training rows",
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
):
  registry.register(_measure)


def make_measure_fn(model, p: int):
  """fn(params, inputs, labels, train_w, phase, key_mask) -> {name: value} of one
  run at one checkpoint: every registered measure, and the embedding's and
  unembedding's frequency norms and the embedding itself (for the figures).
  jit/vmap it over runs."""
  basis = fourier_basis(p)

  def fn(params, inputs, labels, train_w, phase, key_mask):
    logits = model.apply({"params": params}, inputs)[:, :p].astype(jnp.float32)
    restricted, excluded = split_logits(logits.reshape(p, p, p), phase, key_mask)
    embed = params["Embed_0"]["embedding"][:p]
    norms = freq_norms(embed, basis)
    ctx = Context(
      params,
      logits,
      restricted.reshape(p * p, p),
      excluded.reshape(p * p, p),
      labels,
      train_w,
      norms,
      key_mask,
    )
    return dict(
      **{name: m.fn(ctx) for name, m in registry.MEASURES.items()},
      embed_norms=norms,
      unembed_norms=freq_norms(params["unembed"]["kernel"][:, :p].T, basis),
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
