"""Optimizers as optax chains.

Per-run hyperparameters (learning rate, weight decay, betas) are injected into the
optimizer state with ``optax.inject_hyperparams``, so each run of a vmapped sweep
carries its own values and one compiled program trains them all.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def warmup(warmup_steps: int) -> optax.Schedule:
  """Linear warmup: update t (from 0) is scaled by min(1, (t + 1) / warmup_steps)."""
  return lambda count: jnp.minimum(1.0, (count + 1) / max(warmup_steps, 1))


def make_optimizer(optim_cfg, lr=None, weight_decay=None) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay) with linear warmup, the paper's optimizer.

  ``lr`` and ``weight_decay`` override the config's values; they may be traced, so
  ``jax.vmap`` over them gives one optimizer state per run. ``update`` reads the
  hyperparameters from the state, so any instance updates any run's state.
  """
  adamw = optax.inject_hyperparams(optax.adamw)(
    learning_rate=optim_cfg.lr if lr is None else lr,
    b1=optim_cfg.b1,
    b2=optim_cfg.b2,
    weight_decay=optim_cfg.weight_decay if weight_decay is None else weight_decay,
  )
  return optax.chain(adamw, optax.scale_by_schedule(warmup(optim_cfg.warmup_steps)))
