"""Optax pieces of the grokking literature: warmup, weight decay (towards zero or the
initial weights) and the gradient filters (Grokfast-EMA, Grokfast-MA, ⊥Grad).

Each is an ``optax.GradientTransformation`` factory whose numeric arguments may be
traced, one value per run of a vmapped sweep; grokjax.methods declares them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def warmup(warmup_steps: int) -> optax.Schedule:
  """Linear warmup: update t (from 0) is scaled by min(1, (t + 1) / warmup_steps)."""
  return lambda count: jnp.minimum(1.0, (count + 1) / max(warmup_steps, 1))


def cosine_after(warmup_steps: int, decay_steps: int, floor) -> optax.Schedule:
  """1 until ``warmup_steps``, then a cosine from 1 to ``floor`` (may be traced)
  over ``decay_steps`` updates, then ``floor``: openai/grok's ``--anneal_lr``
  (its floor: 0.1)."""

  def schedule(count):
    t = jnp.clip((count - warmup_steps) / max(decay_steps, 1), 0.0, 1.0)
    return floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * t))

  return schedule


class DecayState(NamedTuple):
  init_params: optax.Params | None  # the initial weights, when decaying towards them


def is_embedding(name: str) -> bool:
  """Whether a top-level module of a model's parameters is a token embedding: an
  ``nn.Embed`` (Flax names them ``Embed_0``, ...; the transformer's, openai_grok's and
  nanda's). Position embeddings (``pos_embed``) and every other module are not."""
  return name.startswith("Embed")


def per_module(value, embed_value):
  """``params -> `` a tree of per-leaf values: ``value`` on every leaf but the token
  embeddings' (``is_embedding``), which get ``embed_value`` where it is >= 0 and
  ``value`` where it is negative (the sentinel "same as the rest"). Both may be traced
  (one value per run); with the sentinel every leaf holds the same number, bit for bit.
  Liu et al. (2022) give the embedding ("representation") its own lr and weight decay."""
  chosen = jnp.where(embed_value >= 0, embed_value, value)

  def pick(path, _):
    top = getattr(path[0], "key", None) if path else None
    return chosen if isinstance(top, str) and is_embedding(top) else value

  def leaves(params):
    return jax.tree_util.tree_map_with_path(pick, params)

  return leaves


def decayed_weights(
  weight_decay, to_init: bool = False, embed_weight_decay=None
) -> optax.GradientTransformation:
  """Adds weight_decay * (w - w0) to the updates: w0 = 0 (AdamW's decay) or, with
  ``to_init`` (static: the state then holds them), the initial weights (openai/grok's
  to_init). ``embed_weight_decay`` (may be traced; negative: ``weight_decay``) is the
  token embeddings' own (``per_module``)."""

  def init(params):
    return DecayState(params if to_init else None)

  def update(updates, state, params):
    if embed_weight_decay is None:
      wd = jax.tree.map(lambda _: weight_decay, params)
    else:
      wd = per_module(weight_decay, embed_weight_decay)(params)
    if state.init_params is None:
      return jax.tree.map(lambda u, p, w: u + w * p, updates, params, wd), state
    decay = lambda u, p, p0, w: u + w * (p - p0)
    return jax.tree.map(decay, updates, params, state.init_params, wd), state

  return optax.GradientTransformation(init, update)


def descent(lr, embed_lr) -> optax.GradientTransformation:
  """The updates times -lr (``optax.scale(-lr)``, the same operations), the token
  embeddings' times -embed_lr (``per_module``: a negative embed_lr means lr)."""

  def update(updates, state, params):
    rates = per_module(lr, embed_lr)(params)
    return jax.tree.map(lambda g, r: -r * g, updates, rates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class GrokfastEmaState(NamedTuple):
  ema: optax.Updates  # exponential moving average of the gradients
  count: jax.Array  # gradients seen


def grokfast_ema(alpha=0.98, lamb=2.0) -> optax.GradientTransformation:
  """Grokfast-EMA (Lee et al. 2024): g + lamb * EMA_alpha(g).

  The EMA starts at the first gradient, as in the paper's code. ``alpha`` and
  ``lamb`` may be traced (one value per run); ``lamb = 0`` leaves g unchanged.
  """

  def init(params):
    return GrokfastEmaState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

  def update(grads, state, params=None):
    del params
    first = state.count == 0
    ema = jax.tree.map(
      lambda e, g: jnp.where(first, g, alpha * e + (1 - alpha) * g), state.ema, grads
    )
    out = jax.tree.map(lambda g, e: g + lamb * e, grads, ema)
    return out, GrokfastEmaState(ema, state.count + 1)

  return optax.GradientTransformation(init, update)


class GrokfastMaState(NamedTuple):
  window: optax.Updates  # the last `size` gradients, a ring buffer on a leading axis
  total: optax.Updates  # their sum
  leaving: optax.Updates  # the gradient the next update overwrites (it leaves the sum)
  count: jax.Array  # gradients seen


def grokfast_ma(size: int = 100, lamb=5.0, step=None) -> optax.GradientTransformation:
  """Grokfast-MA (Lee et al. 2024): g + lamb * mean of the last ``size`` gradients,
  applied once ``size`` gradients have been seen (before that, g unchanged).

  ``size`` is static (the buffer's shape); ``lamb`` may be traced per run. The mean
  is kept as a running sum, so a step costs O(parameters), not O(size x parameters).
  The buffer is only read after it is written (``leaving`` is fetched for the next
  update): reading the slot before overwriting it made XLA copy the whole buffer
  twice a step (8x slower on CPU). ``step`` (default: the state's own count) is the
  index of this update; pass it unbatched when vmapping over runs, so the ring
  buffer's slot is one index for all runs and the write happens in place.
  """

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    window = jax.tree.map(lambda p: jnp.zeros((size, *p.shape), p.dtype), params)
    return GrokfastMaState(window, zeros, zeros, jnp.zeros((), jnp.int32))

  def update(grads, state, params=None):
    del params
    seen = state.count if step is None else step
    slot = seen % size
    total = jax.tree.map(lambda t, old, g: t - old + g, state.total, state.leaving, grads)
    window = jax.tree.map(lambda w, g: w.at[slot].set(g), state.window, grads)
    leaving = jax.tree.map(lambda w: w[(slot + 1) % size], window)
    full = seen + 1 >= size
    out = jax.tree.map(lambda g, t: g + jnp.where(full, lamb / size, 0.0) * t, grads, total)
    return out, GrokfastMaState(window, total, leaving, state.count + 1)

  return optax.GradientTransformation(init, update)


def gaussian_like(key, tree):
  """Standard normal noise shaped like ``tree``: leaf i drawn from fold_in(key, i)."""
  leaves, treedef = jax.tree.flatten(tree)
  draw = lambda i, x: jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
  return jax.tree.unflatten(treedef, [draw(i, x) for i, x in enumerate(leaves)])


def add_gaussian(tree, key, scale):
  """``tree`` plus ``scale`` x N(0, 1) noise (``gaussian_like``); ``scale`` may be
  traced, and at 0 the tree comes back unchanged, bit for bit."""
  noisy = lambda x, n: jnp.where(scale > 0, x + scale * n, x)
  return jax.tree.map(noisy, tree, gaussian_like(key, tree))


def update_noise(noise_factor, key, step, b1: float = 0.0) -> optax.GradientTransformation:
  """openai/grok's ``--noise_factor`` (CustomAdamW): Gaussian noise added to Adam's
  step direction after the gradient, N(0, noise_factor^2) on ``exp_avg / denom``
  before the step size ``lr / (1 - b1^t)``; on optax's bias-corrected direction
  m_hat / (sqrt(v_hat) + eps) that is noise_factor / (1 - b1^t) x N(0, 1), t = step + 1
  (b1 = 0: no correction). The learning rate and its schedule then scale it; the
  weight decay does not see it.

  Unlike ``optax.add_noise`` (variance eta / (1 + t)^gamma, its own key in its state),
  the scale is constant after the first steps and the key is given (the run's key of
  this step, ``grokjax.train.method_key``). ``noise_factor`` may be traced per run; at
  0 the updates come back unchanged. Place it right after ``optax.scale_by_adam``.
  """

  def update(updates, state, params=None):
    del params
    t = jnp.asarray(step, jnp.float32) + 1
    return add_gaussian(updates, key, noise_factor / (1 - jnp.float32(b1) ** t)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def orthogonal_grad(enabled=True) -> optax.GradientTransformation:
  """⊥Grad (Prieto et al. 2025): remove from each parameter tensor's gradient its
  component along that tensor, then rescale to the gradient's original norm.

  ``enabled`` may be a traced 0/1 per run (0 leaves the gradients unchanged).
  """

  def update(grads, state, params):
    def project(g, w):
      w_flat, g_flat = w.reshape(-1), g.reshape(-1)
      coef = jnp.dot(w_flat, g_flat) / (jnp.dot(w_flat, w_flat) + 1e-30)
      perp = g - coef * w
      scale = jnp.linalg.norm(g_flat) / (jnp.linalg.norm(perp.reshape(-1)) + 1e-30)
      return jnp.where(enabled > 0, perp * scale, g)

    return jax.tree.map(project, grads, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
