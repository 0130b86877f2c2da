"""The per-example losses: cross-entropy (optax's) and StableMax cross-entropy, each
optionally computed in float64 (``loss.float64``); grokjax.methods declares them.

StableMax (Prieto et al. 2025, "Grokking at the edge of numerical stability")
replaces exp in the softmax by s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0,
which grows linearly instead of exponentially and so avoids the floating-point
absorption ("softmax collapse") that stalls grokking without weight decay.

``in_float64(fn)``: the loss and its gradient w.r.t. the logits computed in float64
from the float32 logits, as the papers' PyTorch code does (``logits.to(float64)``
before the loss: Prieto et al.'s ``stablemax_cross_entropy`` and
``cross_entropy_float64``, Nanda et al.'s ``cross_entropy_high_precision``). The
model, its gradient and the optimizer stay float32: only the per-example loss and the
logits' gradient come back, rounded to float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def stablemax_s(x):
  """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0 (positive, increasing, C^1)."""
  return jnp.where(x >= 0, x + 1, 1 / (1 - jnp.minimum(x, 0)))


def _stablemax(logits_BxC, labels_B):
  """-log(s(z_y) / sum_c s(z_c)) per example, in the logits' dtype."""
  s = stablemax_s(logits_BxC)
  picked = jnp.take_along_axis(s, labels_B[:, None], axis=-1)[:, 0]
  return jnp.log(s.sum(-1)) - jnp.log(picked)


def in_float64(fn):
  """``fn(logits_BxC, labels_B)`` computed in float64 whatever the logits' dtype,
  the result in the logits' dtype; its gradient w.r.t. the logits too (a custom VJP
  whose forward and backward passes each trace under ``jax.enable_x64``, so it works
  inside a float32 program, jitted and vmapped)."""

  def run64(logits, labels):
    with jax.enable_x64(True):
      return fn(logits.astype(jnp.float64), labels).astype(logits.dtype)

  @jax.custom_vjp
  def loss(logits_BxC, labels_B):
    return run64(logits_BxC, labels_B)

  def fwd(logits_BxC, labels_B):
    return run64(logits_BxC, labels_B), (logits_BxC, labels_B)

  def bwd(res, g_B):
    logits, labels = res
    with jax.enable_x64(True):
      _, vjp = jax.vjp(lambda z: fn(z, labels), logits.astype(jnp.float64))
      (g_BxC,) = vjp(g_B.astype(jnp.float64))
      return g_BxC.astype(logits.dtype), None

  loss.defvjp(fwd, bwd)
  return loss


_stablemax64 = in_float64(_stablemax)
_softmax64 = in_float64(optax.softmax_cross_entropy_with_integer_labels)


def stablemax_cross_entropy(logits_BxC, labels_B, float64: bool = False):
  """-log(s(z_y) / sum_c s(z_c)) per example; ``float64``: computed in float64."""
  return (_stablemax64 if float64 else _stablemax)(logits_BxC, labels_B)


def softmax_cross_entropy(logits_BxC, labels_B, float64: bool = False):
  """Cross-entropy per example (optax's); ``float64``: computed in float64."""
  fn = _softmax64 if float64 else optax.softmax_cross_entropy_with_integer_labels
  return fn(logits_BxC, labels_B)
