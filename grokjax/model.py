"""The models: the paper's decoder-only causal transformer (pre-LN), the paper code's
own transformer (``openai_grok``: post-LN, no biases, sinusoidal positions), Nanda et
al.'s one-layer transformer (``nanda``: no LayerNorm, ``x y =``) and a one-hot MLP
(with or without biases, with or without the op token), in Flax.

Each reads the four tokens ``x op y =`` and predicts the answer from the last
position; ``init``/``apply`` are pure, so the parameters of many runs stack on a
leading axis and ``jax.vmap`` trains them together. ``model.init=torch`` gives the
transformer and the MLP PyTorch's default initialisation instead of Flax's.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grokjax import registry
from grokjax.errors import UserError
from grokjax.registry import Key

SEQ_LEN = 4  # x, op, y, =
INITS = ("flax", "torch")


def uniform(bound: float):
  """An initializer drawing U(-bound, bound): PyTorch's nn.Linear weights and biases
  (Kaiming-uniform with a = sqrt(5) gives bound = 1 / sqrt(fan_in))."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(fan_in: int) -> dict:
  """The kernel_init and bias_init of ``torch.nn.Linear(fan_in, ...)``'s defaults."""
  return dict(kernel_init=uniform(1 / math.sqrt(fan_in)), bias_init=uniform(1 / math.sqrt(fan_in)))


def dense_init(init: str, fan_in: int) -> dict:
  """Dense/DenseGeneral initializers for ``model.init``: Flax's own (nothing passed,
  so the numbers stay those of the defaults) or PyTorch's for ``fan_in`` inputs; and
  ``"normal"`` (the nanda model's): kernels N(0, 1 / fan_in), Flax's zero biases."""
  if init == "normal":
    return dict(kernel_init=normal(fan_in))
  return {} if init == "flax" else torch_linear(fan_in)


def normal(fan_in: int):
  """N(0, 1 / fan_in), untruncated: ``torch.randn(...) / np.sqrt(fan_in)``."""
  return nn.initializers.normal(1 / math.sqrt(fan_in))


def embed_init(init: str) -> dict:
  """nn.Embed's initializer: Flax's (N(0, 1/width)) or torch.nn.Embedding's N(0, 1)."""
  return {} if init == "flax" else dict(embedding_init=nn.initializers.normal(1.0))


class Attention(nn.Module):
  """Multi-head dot-product attention of queries ``q`` over positions ``kv``.

  The key projection has no bias: a key bias shifts every score of a query by the
  same amount, so its gradient is zero and Adam would only amplify rounding noise.
  With ``bias=False`` no projection has one (openai/grok). The q/k/v kernels are
  [width, heads, head] (fan-in: width), the output's [heads, head, width] (fan-in:
  heads * head).
  """

  num_heads: int
  weight_init: str = "flax"  # model.init ("init" would hide Module.init)
  bias: bool = True

  @nn.compact
  def __call__(self, q_BxSxD, kv_BxTxD, mask=None):
    width = kv_BxTxD.shape[-1]
    head = width // self.num_heads
    inits = dense_init(self.weight_init, width)
    proj = lambda name, bias: nn.DenseGeneral(
      (self.num_heads, head), use_bias=bias and self.bias, name=name, **inits
    )
    q_BxSxHxK = proj("query", True)(q_BxSxD)
    k_BxTxHxK = proj("key", False)(kv_BxTxD)
    v_BxTxHxK = proj("value", True)(kv_BxTxD)
    out = nn.dot_product_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask=mask)
    out_init = dense_init(self.weight_init, self.num_heads * head)
    return nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.bias, name="out", **out_init)(out)


def dropout(module: nn.Module, x, rate):
  """torch.nn.Dropout(rate) in training: each entry zeroed with probability ``rate``,
  the others scaled by 1 / (1 - rate), the mask from ``module``'s "dropout" rng.
  ``rate`` may be traced (one per run; 0 returns ``x`` unchanged, bit for bit);
  None (the evaluation, and programs without dropout): ``x`` itself, no rng drawn."""
  if rate is None:
    return x
  keep = 1 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class Block(nn.Module):
  """Pre-LN block: causal self-attention and a 4x-wide GELU MLP.

  With ``last_only`` it computes the last position alone (its query attends to
  every position, which the causal mask allows): the same numbers for the answer
  token at a fraction of the cost, used in the final block.
  """

  width: int
  num_heads: int
  last_only: bool = False
  weight_init: str = "flax"  # model.init ("init" would hide Module.init)

  @nn.compact
  def __call__(self, h_BxTxD, dropout_rate=None):
    a = nn.LayerNorm()(h_BxTxD)
    if self.last_only:
      h_BxTxD, q, mask = h_BxTxD[:, -1:], a[:, -1:], None
    else:
      q, mask = a, nn.make_causal_mask(jnp.ones(h_BxTxD.shape[:2], bool))
    h_BxTxD = h_BxTxD + Attention(self.num_heads, self.weight_init)(q, a, mask=mask)
    m = nn.Dense(4 * self.width, **dense_init(self.weight_init, self.width))(
      nn.LayerNorm()(h_BxTxD)
    )
    m = nn.Dense(self.width, **dense_init(self.weight_init, 4 * self.width))(nn.gelu(m))
    return h_BxTxD + dropout(self, m, dropout_rate)  # openai/grok's ffn_drop


class Transformer(nn.Module):
  """Token and learned position embeddings, pre-LN causal blocks, answer logits.

  ``weight_init="torch"`` (model.init): every Embed and Dense as PyTorch initialises
  nn.Embedding and nn.Linear; the position embeddings stay N(0, 0.02), a parameter of
  their own (as in experiments/torch_reference.py); LayerNorms: scale 1, bias 0.
  """

  vocab_size: int
  num_classes: int
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4
  weight_init: str = "flax"  # model.init ("init" would hide Module.init)

  @nn.compact
  def __call__(self, tokens_BxT, dropout=None):
    """``dropout``: the rate of ``Block``'s feed-forward dropout (training only)."""
    t = tokens_BxT.shape[-1]
    h = nn.Embed(self.vocab_size, self.width, **embed_init(self.weight_init))(tokens_BxT)
    h = h + self.param("pos_embed", nn.initializers.normal(0.02), (SEQ_LEN, self.width))[:t]
    for i in range(self.num_layers):
      h = Block(self.width, self.num_heads, i == self.num_layers - 1, self.weight_init)(h, dropout)
    h = nn.LayerNorm()(h[:, -1])
    unembed = dense_init(self.weight_init, self.width)
    return nn.Dense(self.num_classes, name="unembed", **unembed)(h)  # logits_BxC


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
  """openai/grok's fixed position encoding (grok/transformer.py,
  ``Transformer._position_encoding``): row ``pos``, column ``i`` is
  ``sin(pos / 10000 ** (i / width))`` for even ``i`` and
  ``cos(pos / 10000 ** ((i - 1) / width))`` for odd ``i``; float64, then float32."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  i = np.arange(width)
  angle = pos / 10000.0 ** ((i - i % 2) / width)
  return np.where(i % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


def _torch_layer_norm(name: str) -> nn.LayerNorm:
  """torch.nn.LayerNorm(width): eps 1e-5, a two-pass variance, scale 1, bias 0."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


class GrokBlock(nn.Module):
  """openai/grok's ``DecoderBlock`` (dropout 0, weight noise 0, its defaults): post-LN,
  ``a1 = LN(x + MHA(x))``, ``a2 = LN(a1 + FFN(a1))``, FFN = Linear(d, 4d) -> ReLU ->
  Linear(4d, d), no linear layer with a bias. ``last_only`` as in ``Block``."""

  width: int
  num_heads: int
  last_only: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, dropout_rate=None):
    if self.last_only:
      q, mask = x_BxTxD[:, -1:], None
    else:
      q, mask = x_BxTxD, nn.make_causal_mask(jnp.ones(x_BxTxD.shape[:2], bool))
    a = Attention(self.num_heads, "torch", bias=False, name="self_attn")(q, x_BxTxD, mask=mask)
    a1 = _torch_layer_norm("self_attn_norm")(q + a)
    d_ff = 4 * self.width
    m = nn.Dense(d_ff, use_bias=False, name="ffn_in", **torch_linear(self.width))(a1)
    m = nn.Dense(self.width, use_bias=False, name="ffn_out", **torch_linear(d_ff))(nn.relu(m))
    return _torch_layer_norm("ffn_norm")(a1 + dropout(self, m, dropout_rate))  # its ffn_drop


class OpenAIGrok(nn.Module):
  """The paper code's transformer (openai/grok, grok/transformer.py) on grokjax's tokens.

  openai/grok feeds ``<eos> x op y = z`` and reads the answer ``z`` off the output at
  the ``=`` position; so does this model: it prepends an ``<eos>`` token (one more
  embedding row, index ``vocab_size``) to ``x op y =`` and returns the logits of the
  last position. Token embedding N(0, 1) (torch.nn.Embedding), fixed sinusoidal
  positions added, post-LN blocks, and an unembedding without a bias, every linear
  layer initialised as torch.nn.Linear. Unlike openai/grok, the logits span the
  answers (``num_classes``), not its whole 239-token vocabulary.
  """

  vocab_size: int
  num_classes: int
  num_layers: int = 2
  width: int = 128
  num_heads: int = 4

  @nn.compact
  def __call__(self, tokens_BxT, dropout=None):
    """``dropout``: the rate of ``GrokBlock``'s feed-forward dropout (training only)."""
    eos_Bx1 = jnp.full((tokens_BxT.shape[0], 1), self.vocab_size, tokens_BxT.dtype)
    tokens = jnp.concatenate([eos_Bx1, tokens_BxT], axis=1)
    embed = nn.Embed(self.vocab_size + 1, self.width, embedding_init=nn.initializers.normal(1.0))
    h = embed(tokens) + sinusoidal_positions(tokens.shape[1], self.width)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      block = GrokBlock(self.width, self.num_heads, last, name=f"Block_{i}")  # as transformer's
      h = block(h, dropout)
    unembed = nn.Dense(self.num_classes, use_bias=False, name="unembed", **torch_linear(self.width))
    return unembed(h[:, -1])  # logits_BxC


class MLP(nn.Module):
  """The one-hot MLP of the grokking literature: one-hot inputs concatenated,
  ``num_layers`` ReLU hidden layers of ``width``, answer logits.

  ``one_hot`` (model.one_hot): ``"x_op_y"``, x, op and y each one-hot over the whole
  vocabulary (3 x vocab_size inputs), or ``"x_y"``, x and y each one-hot over the
  elements (2 x num_classes inputs, no op token: Prieto et al.'s
  ``AlgorithmicDataset``, ``cat(one_hot(x, p), one_hot(y, p))``). ``bias``
  (model.bias): False drops every bias (Prieto et al.'s ``MLP(..., bias=False)``).
  """

  vocab_size: int
  num_classes: int
  num_layers: int = 2
  width: int = 200
  weight_init: str = "flax"  # model.init ("init" would hide Module.init)
  bias: bool = True
  one_hot: str = "x_op_y"

  @nn.compact
  def __call__(self, tokens_BxT):
    b = tokens_BxT.shape[0]
    if self.one_hot == "x_y":
      h = jax.nn.one_hot(tokens_BxT[:, np.array([0, 2])], self.num_classes).reshape(b, -1)
    else:
      h = jax.nn.one_hot(tokens_BxT[:, :3], self.vocab_size).reshape(b, -1)
    for _ in range(self.num_layers):
      layer = nn.Dense(self.width, use_bias=self.bias, **dense_init(self.weight_init, h.shape[-1]))
      h = nn.relu(layer(h))
    unembed = dense_init(self.weight_init, h.shape[-1])
    return nn.Dense(self.num_classes, use_bias=self.bias, name="unembed", **unembed)(h)


class NandaBlock(nn.Module):
  """Nanda et al.'s ``TransformerBlock`` without LayerNorm (``use_ln=False``), for the
  last position only (its query attends to every position: the answer's numbers):
  ``h = x + Attn(x)``, ``h + W_out relu(W_in h + b_in) + b_out``. Attention has no
  biases; every kernel is N(0, 1/d_model) (their ``randn / sqrt(d_model)``: W_out's
  too, though its fan-in is d_mlp), the MLP's biases start at 0."""

  width: int
  num_heads: int
  d_mlp: int

  @nn.compact
  def __call__(self, x_BxTxD):
    last = x_BxTxD[:, -1:]
    h = last + Attention(self.num_heads, "normal", bias=False)(last, x_BxTxD)
    m = nn.Dense(self.d_mlp, kernel_init=normal(self.width))(h)  # W_in, b_in
    return h + nn.Dense(self.width, kernel_init=normal(self.width))(nn.relu(m))  # W_out, b_out


class Nanda(nn.Module):
  """Nanda et al. (2023)'s one-layer transformer (progress-measures-paper,
  ``transformers.py``: ``Transformer(config, use_ln=False)``, ``act_type="ReLU"``).

  It reads ``x y =`` (grokjax's ``x op y =`` without the op token; ``=`` becomes token
  ``num_classes``, their ``p``): a token embedding of num_classes + 1 rows (``d_vocab
  = p + 1``) N(0, 1/d_model), learned positions N(0, 1/d_model), one block
  (``NandaBlock``: attention without biases, ReLU MLP of 4 x width with biases, no
  LayerNorm), no final LayerNorm, and an unembedding without a bias N(0, 1/d_vocab) to
  d_vocab logits, the last of which (``=``) is never an answer, as in their loss.
  Parameter names are the transformer's (``Embed_0``, ``pos_embed``,
  ``Block_0/Attention_0``, ``Block_0/Dense_0`` and ``Dense_1``, ``unembed``), so the
  progress measures (grokjax.fourier) read it alike.
  """

  vocab_size: int
  num_classes: int
  width: int = 128
  num_heads: int = 4

  @nn.compact
  def __call__(self, tokens_BxT):
    d_vocab = self.num_classes + 1
    eq_Bx1 = jnp.full((tokens_BxT.shape[0], 1), self.num_classes, tokens_BxT.dtype)
    tokens_Bx3 = jnp.concatenate([tokens_BxT[:, :1], tokens_BxT[:, 2:3], eq_Bx1], axis=1)
    h = nn.Embed(d_vocab, self.width, embedding_init=normal(self.width))(tokens_Bx3)
    h = h + self.param("pos_embed", normal(self.width), (3, self.width))
    h = NandaBlock(self.width, self.num_heads, 4 * self.width, name="Block_0")(h)
    unembed = nn.Dense(d_vocab, use_bias=False, name="unembed", kernel_init=normal(d_vocab))
    return unembed(h[:, -1])  # logits_BxV, V = num_classes + 1


positive = (lambda v: v > 0, "> 0")
NUM_LAYERS = Key("model.num_layers", 2, "blocks (transformer) or hidden layers (mlp)", *positive)
WIDTH = Key("model.width", 128, "residual width (transformer) or hidden width (mlp)", *positive)
NUM_HEADS = Key("model.num_heads", 4, "attention heads", *positive)
INIT = Key(
  "model.init",
  "flax",
  "initialisation of transformer and mlp: Flax's defaults, or PyTorch's (nn.Embedding "
  "N(0, 1), nn.Linear U(+-1/sqrt(fan_in))); openai_grok is always torch",
  choices=INITS,
  axis="init",
)


def _check_heads(width, num_heads):
  if width % num_heads:
    raise UserError(
      f"model.width={width} is not divisible by model.num_heads={num_heads}; pick a width that is"
    )


def _transformer(vocab_size, num_classes, num_layers, width, num_heads, init="flax"):
  _check_heads(width, num_heads)
  return Transformer(vocab_size, num_classes, num_layers, width, num_heads, init)


BIAS = Key("model.bias", True, "mlp: biases in its layers (Prieto et al.'s MLP has none)")
ONE_HOT = Key(
  "model.one_hot",
  "x_op_y",
  "mlp: its inputs: one-hot x, op and y over the vocabulary, or one-hot x and y over the "
  "elements (Prieto et al.; no op token)",
  choices=("x_op_y", "x_y"),
)


def _mlp(vocab_size, num_classes, num_layers, width, init="flax", bias=True, one_hot="x_op_y"):
  return MLP(vocab_size, num_classes, num_layers, width, init, bias, one_hot)


def _nanda(vocab_size, num_classes, width, num_heads):
  _check_heads(width, num_heads)
  return Nanda(vocab_size, num_classes, width, num_heads)


def _openai_grok(vocab_size, num_classes, num_layers, width, num_heads):
  _check_heads(width, num_heads)
  return OpenAIGrok(vocab_size, num_classes, num_layers, width, num_heads)


registry.register(
  registry.Model(
    "transformer",
    (NUM_LAYERS, WIDTH, NUM_HEADS, INIT),
    _transformer,
    "the paper's decoder-only transformer (pre-LN)",
  )
)
registry.register(
  registry.Model(
    "mlp", (NUM_LAYERS, WIDTH, INIT, BIAS, ONE_HOT), _mlp, "one-hot inputs, ReLU hidden layers"
  )
)
registry.register(
  registry.Model(
    "openai_grok",
    (NUM_LAYERS, WIDTH, NUM_HEADS),
    _openai_grok,
    "the paper code's transformer (openai/grok): post-LN, no biases, sinusoidal positions, "
    "PyTorch's init",
  )
)


registry.register(
  registry.Model(
    "nanda",
    (WIDTH, NUM_HEADS),
    _nanda,
    "Nanda et al.'s 1-layer transformer: x y = tokens, ReLU, no LayerNorm, their init "
    "(model.num_layers and model.init do not apply)",
  )
)


def make_model(model_cfg, vocab_size: int, num_classes: int) -> nn.Module:
  """The model a config's ``model`` section (or a dict like it) names, for one vocabulary."""
  entry = registry.lookup(registry.MODELS, model_cfg["name"], "model.name")
  # a key the section lacks (a dict written before the key existed) takes its default
  values = {k.field: model_cfg.get(k.path.split(".", 1)[1], k.default) for k in entry.keys}
  return entry.make(vocab_size, num_classes, **values)
