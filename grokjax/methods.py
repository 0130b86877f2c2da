"""The built-in optimizer, methods and losses, each declared once (grokjax.registry).

- ``adamw``: the paper's AdamW with linear warmup (then constant, or a cosine to a
  floor: ``optim.schedule``); ``optim.decoupled=False`` is Adam
  with an L2 term (torch.optim.Adam's weight_decay, which Grokfast uses);
  ``method.decay_to_init`` decays towards the initial weights (openai/grok's to_init);
- ``init_scale``: the initial parameters times alpha (Omnigrok);
- ``orthograd``: ⊥Grad (Prieto et al. 2025);
- ``grokfast_ema`` / ``grokfast_ma``: Grokfast's gradient filters (Lee et al. 2024);
- ``norm_target``: the weights rescaled to a fixed L2 norm after each update (Omnigrok);
- losses ``softmax`` and ``stablemax`` (Prieto et al. 2025).

A user's own method is declared the same way, in their own file: see docs/extending.md.

``orthograd``, ``grokfast_ema`` and ``norm_target`` declare no ``active`` rule, so they
are in every program, as they were before the registry: each is the identity at its
off value, and leaving one out where no run uses it changes how XLA fuses the update,
and with it the last bits of every run's numbers (tests/test_golden.py holds them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from grokjax import losses, optim
from grokjax.registry import Key, Loss, Method, Optimizer, register

positive, non_negative = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0")


def adamw(
  filters,
  lr,
  weight_decay,
  eps,
  lr_floor,
  b1,
  b2,
  warmup_steps,
  schedule,
  decay_steps,
  decoupled,
  decay_to_init,
):
  """The filters, then Adam scaling and decoupled weight decay (AdamW) or, not
  ``decoupled``, an L2 term and then Adam scaling; times -lr, the warmup and, with
  ``schedule="cosine"``, a cosine to ``lr_floor`` x lr over ``decay_steps``."""
  decay = optim.decayed_weights(weight_decay, decay_to_init)
  adam = optax.scale_by_adam(b1, b2, eps)
  parts = [*filters, *([adam, decay] if decoupled else [decay, adam]), optax.scale(-lr)]
  scale = optim.warmup(warmup_steps)
  if schedule == "cosine":
    anneal = optim.cosine_after(warmup_steps, decay_steps, lr_floor)
    scale = lambda count, up=scale: up(count) * anneal(count)
  return optax.chain(optax.chain(*parts), optax.scale_by_schedule(scale))


register(
  Optimizer(
    "adamw",
    (
      Key("optim.lr", 1e-3, "learning rate", *positive, per_run=True),
      Key("optim.weight_decay", 1.0, "weight decay", *non_negative, per_run=True),
      Key(
        "optim.eps",
        1e-8,
        "Adam epsilon (larger calms the slingshot spikes, Thilak et al. 2022)",
        *positive,
        per_run=True,
      ),
      Key(
        "optim.lr_floor",
        0.1,
        "cosine schedule: the final lr, a fraction of lr (openai/grok: 0.1)",
        lambda v: 0 <= v <= 1,
        "in [0, 1]",
        per_run=True,
      ),
      Key("optim.b1", 0.9, "Adam beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
      Key("optim.b2", 0.98, "Adam beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
      Key("optim.warmup_steps", 10, "linear warmup over this many updates", *non_negative),
      Key(
        "optim.schedule",
        "constant",
        "lr after warmup: the paper's constant, or openai/grok's cosine (--anneal_lr)",
        choices=("constant", "cosine"),
      ),
      Key(
        "optim.decay_steps",
        100_000,
        "cosine schedule: updates from the end of warmup to the floor",
        *positive,
      ),
      Key("optim.decoupled", True, "AdamW; False: Adam with L2 (torch.optim.Adam)"),
      Key("method.decay_to_init", False, "decay towards the initial weights, not zero"),
    ),
    adamw,
    "AdamW (Loshchilov & Hutter), the paper's optimizer, with linear warmup",
  )
)

register(
  Method(
    "init_scale",
    (Key("method.init_scale", 1.0, "initial parameters times this (Omnigrok)", *positive, True),),
    init=lambda params, init_scale: jax.tree.map(lambda p: p * init_scale, params),
    help="Omnigrok's initialisation scale alpha",
  )
)

register(
  Method(
    "orthograd",
    (Key("method.orthograd", False, "⊥Grad: drop the gradient along the weights", per_run=True),),
    gradient=lambda orthograd: optim.orthogonal_grad(orthograd),
    help="⊥Grad (Prieto et al. 2025)",
  )
)

register(
  Method(
    "grokfast_ema",
    (
      Key(
        "method.grokfast_alpha",
        0.98,
        "Grokfast-EMA decay",
        lambda v: 0 <= v < 1,
        "in [0, 1)",
        per_run=True,
      ),
      Key("method.grokfast_lamb", 0.0, "Grokfast-EMA strength (0: off)", *non_negative, True),
    ),
    gradient=lambda grokfast_alpha, grokfast_lamb: optim.grokfast_ema(
      grokfast_alpha, grokfast_lamb
    ),
    help="Grokfast-EMA: g + lamb * EMA_alpha(g) (Lee et al. 2024)",
  )
)

register(
  Method(
    "grokfast_ma",
    (
      Key("method.grokfast_window", 100, "Grokfast-MA window (gradients kept)", *positive),
      Key("method.grokfast_ma_lamb", 0.0, "Grokfast-MA strength (0: off)", *non_negative, True),
    ),
    gradient=lambda grokfast_window, grokfast_ma_lamb, step: optim.grokfast_ma(
      grokfast_window, grokfast_ma_lamb, step
    ),
    active=lambda v: v["grokfast_ma_lamb"] > 0,
    separate=True,  # a window of gradients per run: only its runs carry it
    uses_step=True,
    help="Grokfast-MA: g + lamb * mean of the last window gradients (Lee et al. 2024)",
  )
)


def _project_norm(params, norm_target):
  scale = jnp.where(norm_target > 0, norm_target / optax.tree.norm(params), 1.0)
  return jax.tree.map(lambda p: p * scale, params)


register(
  Method(
    "norm_target",
    (Key("method.norm_target", 0.0, "> 0: weights rescaled to this L2 norm", *non_negative, True),),
    after_update=_project_norm,
    help="fixed weight norm after each update (Omnigrok)",
  )
)

register(Loss("softmax", optax.softmax_cross_entropy_with_integer_labels, "cross-entropy"))
register(Loss("stablemax", losses.stablemax_cross_entropy, "StableMax (Prieto et al. 2025)"))
