"""The built-in optimizer, methods and losses, each declared once (grokjax.registry).

- ``adamw``: the paper's AdamW with linear warmup (then constant, or a cosine to a
  floor: ``optim.schedule``); ``optim.decoupled=False`` is Adam
  with an L2 term (torch.optim.Adam's weight_decay, which Grokfast uses);
  ``method.decay_to_init`` decays towards the initial weights (openai/grok's to_init);
  ``optim.embed_lr`` / ``optim.embed_weight_decay`` give the token embeddings their own
  (Liu et al. 2022);
- ``init_scale``: the initial parameters times alpha (Omnigrok);
- ``orthograd``: ⊥Grad (Prieto et al. 2025);
- ``grokfast_ema`` / ``grokfast_ma``: Grokfast's gradient filters (Lee et al. 2024);
- ``norm_target``: the weights rescaled to a fixed L2 norm after each update (Omnigrok);
- losses ``softmax`` and ``stablemax`` (Prieto et al. 2025), either in float64 with
  ``loss.float64`` (grokjax.losses.in_float64).

A user's own method is declared the same way, in their own file: see docs/extending.md.

Each method says which runs use it (``active``: its strength off, the identity): a
program carries only the methods its runs use, so configs/div.py's runs hold AdamW's
state and nothing else, and runs that use another set of methods train in a program
of their own (grokjax.registry.Method).
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
  embed_lr=-1.0,
  embed_weight_decay=-1.0,
  directions=(),
):
  """The filters, then Adam scaling and decoupled weight decay (AdamW) or, not
  ``decoupled``, an L2 term and then Adam scaling; times -lr, the warmup and, with
  ``schedule="cosine"``, a cosine to ``lr_floor`` x lr over ``decay_steps``.
  ``directions`` (the methods' ``direction`` hooks) follow the Adam scaling.

  ``embed_lr`` and ``embed_weight_decay`` (>= 0; negative: the same as the rest) are
  the token embeddings' own lr and weight decay (Liu et al. 2022; ``optim.per_module``):
  the embedding's update is -embed_lr x (Adam + embed_weight_decay x w), the warmup and
  schedule as the rest's. At their defaults every number is today's, bit for bit, and
  the optimizer's state is the same tree either way."""
  decay = optim.decayed_weights(weight_decay, decay_to_init, embed_weight_decay)
  adam = optax.scale_by_adam(b1, b2, eps)
  if directions:
    adam = optax.chain(adam, *directions)
  descent = optim.descent(lr, embed_lr)
  parts = [*filters, *([adam, decay] if decoupled else [decay, adam]), descent]
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
      Key(
        "optim.embed_lr",
        -1.0,
        "the token embeddings' own learning rate (Liu et al. 2022: the Embed module of "
        "transformer, openai_grok and nanda; the rest keeps optim.lr)",
        lambda v: v == -1 or v >= 0,
        "-1 (optim.lr) or >= 0",
        per_run=True,
      ),
      Key(
        "optim.embed_weight_decay",
        -1.0,
        "the token embeddings' own weight decay (Liu et al. 2022; the rest keeps "
        "optim.weight_decay)",
        lambda v: v == -1 or v >= 0,
        "-1 (optim.weight_decay) or >= 0",
        per_run=True,
      ),
    ),
    adamw,
    "AdamW (Loshchilov & Hutter), the paper's optimizer, with linear warmup",
    label=lambda optim: "AdamW" if optim.get("decoupled", True) else "Adam + L2",
  )
)

register(
  Method(
    "init_scale",
    (Key("method.init_scale", 1.0, "initial parameters times this (Omnigrok)", *positive, True),),
    init=lambda params, init_scale: jax.tree.map(lambda p: p * init_scale, params),
    active=lambda v: v["init_scale"] != 1.0,
    help="Omnigrok's initialisation scale alpha",
  )
)

register(
  Method(
    "orthograd",
    (Key("method.orthograd", False, "⊥Grad: drop the gradient along the weights", per_run=True),),
    gradient=lambda orthograd: optim.orthogonal_grad(orthograd),
    active=lambda v: bool(v["orthograd"]),
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
    active=lambda v: v["grokfast_lamb"] > 0,
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
    active=lambda v: v["norm_target"] > 0,
    help="fixed weight norm after each update (Omnigrok)",
  )
)

# Power et al.'s Fig. 2 interventions, as openai/grok implements them (its --dropout,
# --weight_noise, --noise_factor). Each draws from the run's own key of the step
# (train.method_key), so a run's noise is its own alone or batched.
register(
  Method(
    "dropout",
    (
      Key(
        "model.dropout",
        0.0,
        "dropout rate on each block's feed-forward output, in training (openai/grok's --dropout; "
        "transformer and openai_grok)",
        lambda v: 0 <= v < 1,
        "in [0, 1)",
        per_run=True,
      ),
    ),
    forward=lambda key, dropout: dict(dropout=dropout, rngs={"dropout": key}),
    active=lambda v: v["dropout"] > 0,
    help="dropout in the feed-forward blocks during training (openai/grok's placement)",
  )
)

register(
  Method(
    "weight_noise",
    (
      Key(
        "method.weight_noise",
        0.0,
        "std of Gaussian noise added to every weight for each gradient, the gradient taken at the "
        "noisy weights (openai/grok's --weight_noise)",
        *non_negative,
        per_run=True,
      ),
    ),
    perturb=lambda params, key, weight_noise: optim.add_gaussian(params, key, weight_noise),
    active=lambda v: v["weight_noise"] > 0,
    help="weight noise in the forward pass (openai/grok's --weight_noise)",
  )
)

register(
  Method(
    "update_noise",
    (
      Key(
        "method.update_noise",
        0.0,
        "std of Gaussian noise added to Adam's step direction, before the lr (openai/grok's "
        "--noise_factor)",
        *non_negative,
        per_run=True,
      ),
      Key("optim.b1", 0.9, "Adam beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ),
    direction=lambda update_noise, b1, key, step: optim.update_noise(update_noise, key, step, b1),
    active=lambda v: v["update_noise"] > 0,
    uses_step=True,
    uses_key=True,
    help="noise on the update, after the gradient (openai/grok's --noise_factor)",
  )
)

FLOAT64 = Key(
  "loss.float64",
  False,
  "compute the loss and its gradient w.r.t. the logits in float64, the model in float32 "
  "(Prieto et al.'s StableMax, Nanda et al.'s cross-entropy)",
)
register(Loss("softmax", losses.softmax_cross_entropy, "cross-entropy", keys=(FLOAT64,)))
register(
  Loss(
    "stablemax", losses.stablemax_cross_entropy, "StableMax (Prieto et al. 2025)", keys=(FLOAT64,)
  )
)
