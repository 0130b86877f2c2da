"""Decoder-only causal transformer of Power et al. (2022), in Flax.

The model reads the four tokens ``x op y =`` and predicts the answer from the
last position; ``init``/``apply`` are pure, so the parameters of many runs stack on
a leading axis and ``jax.vmap`` trains them together.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grokjax import registry
from grokjax.errors import UserError
from grokjax.registry import Key

SEQ_LEN = 4  # x, op, y, =


class Attention(nn.Module):
  """Multi-head dot-product attention of queries ``q`` over positions ``kv``.

  The key projection has no bias: a key bias shifts every score of a query by the
  same amount, so its gradient is zero and Adam would only amplify rounding noise.
  """

  num_heads: int

  @nn.compact
  def __call__(self, q_BxSxD, kv_BxTxD, mask=None):
    width = kv_BxTxD.shape[-1]
    head = width // self.num_heads
    proj = lambda name, bias: nn.DenseGeneral((self.num_heads, head), use_bias=bias, name=name)
    q_BxSxHxK = proj("query", True)(q_BxSxD)
    k_BxTxHxK = proj("key", False)(kv_BxTxD)
    v_BxTxHxK = proj("value", True)(kv_BxTxD)
    out = nn.dot_product_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask=mask)
    return nn.DenseGeneral(width, axis=(-2, -1), name="out")(out)


class Block(nn.Module):
  """Pre-LN block: causal self-attention and a 4x-wide GELU MLP.

  With ``last_only`` it computes the last position alone (its query attends to
  every position, which the causal mask allows): the same numbers for the answer
  token at a fraction of the cost, used in the final block.
  """

  width: int
  num_heads: int
  last_only: bool = False

  @nn.compact
  def __call__(self, h_BxTxD):
    a = nn.LayerNorm()(h_BxTxD)
    if self.last_only:
      h_BxTxD, q, mask = h_BxTxD[:, -1:], a[:, -1:], None
    else:
      q, mask = a, nn.make_causal_mask(jnp.ones(h_BxTxD.shape[:2], bool))
    h_BxTxD = h_BxTxD + Attention(self.num_heads)(q, a, mask=mask)
    m = nn.Dense(4 * self.width)(nn.LayerNorm()(h_BxTxD))
    return h_BxTxD + nn.Dense(self.width)(nn.gelu(m))


class Transformer(nn.Module):
  """Token and learned position embeddings, pre-LN causal blocks, answer logits."""

  vocab_size: int
  num_classes: int
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4

  @nn.compact
  def __call__(self, tokens_BxT):
    t = tokens_BxT.shape[-1]
    h = nn.Embed(self.vocab_size, self.width)(tokens_BxT)
    h = h + self.param("pos_embed", nn.initializers.normal(0.02), (SEQ_LEN, self.width))[:t]
    for i in range(self.num_layers):
      h = Block(self.width, self.num_heads, last_only=i == self.num_layers - 1)(h)
    h = nn.LayerNorm()(h[:, -1])
    return nn.Dense(self.num_classes, name="unembed")(h)  # logits_BxC


class MLP(nn.Module):
  """The one-hot MLP of the grokking literature: one-hot x, op and y concatenated,
  ``num_layers`` ReLU hidden layers of ``width``, answer logits."""

  vocab_size: int
  num_classes: int
  num_layers: int = 2
  width: int = 200

  @nn.compact
  def __call__(self, tokens_BxT):
    h = jax.nn.one_hot(tokens_BxT[:, :3], self.vocab_size).reshape(tokens_BxT.shape[0], -1)
    for _ in range(self.num_layers):
      h = nn.relu(nn.Dense(self.width)(h))
    return nn.Dense(self.num_classes, name="unembed")(h)


positive = (lambda v: v > 0, "> 0")
NUM_LAYERS = Key("model.num_layers", 2, "blocks (transformer) or hidden layers (mlp)", *positive)
WIDTH = Key("model.width", 128, "residual width (transformer) or hidden width (mlp)", *positive)


def _transformer(vocab_size, num_classes, num_layers, width, num_heads):
  if width % num_heads:
    raise UserError(
      f"model.width={width} is not divisible by model.num_heads={num_heads}; pick a width that is"
    )
  return Transformer(vocab_size, num_classes, num_layers, width, num_heads)


registry.register(
  registry.Model(
    "transformer",
    (NUM_LAYERS, WIDTH, Key("model.num_heads", 4, "attention heads", *positive)),
    _transformer,
    "the paper's decoder-only transformer (pre-LN)",
  )
)
registry.register(
  registry.Model("mlp", (NUM_LAYERS, WIDTH), MLP, "one-hot inputs, ReLU hidden layers")
)


def make_model(model_cfg, vocab_size: int, num_classes: int) -> nn.Module:
  """The model a config's ``model`` section (or a dict like it) names, for one vocabulary."""
  entry = registry.lookup(registry.MODELS, model_cfg["name"], "model.name")
  values = {k.field: model_cfg[k.path.split(".", 1)[1]] for k in entry.keys}
  return entry.make(vocab_size, num_classes, **values)
