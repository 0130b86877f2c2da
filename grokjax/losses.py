"""StableMax cross-entropy (the softmax one is optax's; grokjax.methods declares both).

StableMax (Prieto et al. 2025, "Grokking at the edge of numerical stability")
replaces exp in the softmax by s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0,
which grows linearly instead of exponentially and so avoids the floating-point
absorption ("softmax collapse") that stalls grokking without weight decay.
"""

from __future__ import annotations

import jax.numpy as jnp


def stablemax_s(x):
  """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0 (positive, increasing, C^1)."""
  return jnp.where(x >= 0, x + 1, 1 / (1 - jnp.minimum(x, 0)))


def stablemax_cross_entropy(logits_BxC, labels_B):
  """-log(s(z_y) / sum_c s(z_c)) per example."""
  s = stablemax_s(logits_BxC)
  picked = jnp.take_along_axis(s, labels_B[:, None], axis=-1)[:, 0]
  return jnp.log(s.sum(-1)) - jnp.log(picked)
