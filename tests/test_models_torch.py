"""The paper code's model (model.name=openai_grok) and PyTorch's initialisation
(model.init=torch) against their formulas and, where torch is installed, against
openai/grok's grok/transformer.py rebuilt in torch with the same weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logits_of

from grokjax import config, logs, plan, sweep
from grokjax import model as model_lib
from grokjax.data import make_table
from grokjax.errors import UserError

D, LAYERS, HEADS = 128, 2, 4  # openai/grok's defaults (grok/training.py)


def _params(name, table, seed=0, **model):
  cfg = dict(dict(name=name, num_layers=LAYERS, width=D, num_heads=HEADS, init="flax"), **model)
  m = model_lib.make_model(cfg, table.vocab_size, table.n)
  return m, jax.jit(m.init)(jax.random.key(seed), jnp.asarray(table.inputs[:2]))["params"]


def _flat(params) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path): np.asarray(v) for path, v in leaves}


def _fan_in(path: str, w: np.ndarray) -> int:
  """The inputs of a Dense kernel [in, out] or DenseGeneral [in, heads, head], or of
  the attention's output projection [heads, head, out] (heads * head inputs)."""
  return int(np.prod(w.shape[:-1])) if path.endswith("out/kernel") else w.shape[0]


def test_openai_grok_parameters_are_its_formulas():
  """grok/transformer.py with d_model=128, 2 layers, 4 heads: Embedding(vocab, d);
  per block, per head Wq, Wk, Wv = Linear(d, d / heads, bias=False), Wo = Linear(d, d,
  bias=False), FFN Linear(d, 4d) and Linear(4d, d) without bias, two LayerNorm(d);
  the output Linear(d, vocab, bias=False). Here the vocabulary is grokjax's plus the
  <eos> token, and the output spans the answers."""
  table = make_table("div", 97)
  _, params = _params("openai_grok", table)
  flat = _flat(params)
  vocab, d_key = table.vocab_size + 1, D // HEADS
  want = {"Embed_0/embedding": (vocab, D), "unembed/kernel": (D, table.n)}
  for i in range(LAYERS):
    b = f"Block_{i}/"
    for proj in ("query", "key", "value"):  # the heads' Wq/Wk/Wv.weight.T, stacked
      want[b + f"self_attn/{proj}/kernel"] = (D, HEADS, d_key)
    want[b + "self_attn/out/kernel"] = (HEADS, d_key, D)  # Wo.weight.T
    want[b + "ffn_in/kernel"], want[b + "ffn_out/kernel"] = (D, 4 * D), (4 * D, D)
    for norm in ("self_attn_norm", "ffn_norm"):
      want[b + f"{norm}/scale"] = want[b + f"{norm}/bias"] = (D,)
  assert {k: v.shape for k, v in flat.items()} == want
  per_block = HEADS * 3 * D * d_key + D * D + 2 * (D * 4 * D) + 2 * 2 * D
  total = vocab * D + LAYERS * per_block + D * table.n
  assert sum(v.size for v in flat.values()) == total == 420_992
  # no linear layer has a bias: the only biases are the LayerNorms'
  assert all("norm/" in k for k in flat if k.endswith("bias"))


def _check_torch_init(flat: dict[str, np.ndarray], embed_rows: int):
  dense = {k: w for k, w in flat.items() if k.endswith("kernel")}
  assert dense
  for path, w in dense.items():
    fan_in = _fan_in(path, w)
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(w).max() <= bound, path
    # U(-b, b) has variance b^2 / 3; the sample variance's relative sd is sqrt(0.8 / n)
    assert abs(w.var() / (bound**2 / 3) - 1) < 5 * math.sqrt(0.8 / w.size), path
    bias = flat.get(path[: -len("kernel")] + "bias")
    if bias is not None:
      assert np.abs(bias).max() <= bound and bias.std() > bound / 3, path
  e = flat["Embed_0/embedding"]
  assert e.shape[0] == embed_rows
  assert abs(e.std() - 1) < 0.03 and abs(e.mean()) < 0.03  # torch.nn.Embedding: N(0, 1)
  for path, v in flat.items():
    if path.endswith("scale"):
      assert (v == 1).all(), path
    elif "LayerNorm" in path or "norm/" in path:
      assert (v == 0).all(), path


def test_openai_grok_has_pytorchs_default_init():
  table = make_table("div", 97)
  _check_torch_init(_flat(_params("openai_grok", table)[1]), table.vocab_size + 1)


def test_transformer_and_mlp_with_torch_init():
  table = make_table("div", 97)
  flat = _flat(_params("transformer", table, init="torch")[1])
  _check_torch_init(flat, table.vocab_size)
  assert abs(flat["pos_embed"].std() - 0.02) < 0.005  # its own N(0, 0.02), either init
  assert {k for k in flat if k.endswith("bias")} >= {"unembed/bias", "Block_0/Attention_0/out/bias"}
  mlp = model_lib.make_model(
    dict(name="mlp", num_layers=2, width=200, init="torch"), table.vocab_size, table.n
  )
  p = _flat(jax.jit(mlp.init)(jax.random.key(0), jnp.asarray(table.inputs[:2]))["params"])
  assert p["Dense_0/kernel"].shape[0] == 3 * table.vocab_size
  for path, w in p.items():
    if path.endswith("kernel"):
      bound = 1 / math.sqrt(w.shape[0])
      assert np.abs(w).max() <= bound and abs(w.var() / (bound**2 / 3) - 1) < 0.1, path
  # flax's own init is another distribution: the switch does something
  default = _flat(_params("transformer", table)[1])
  assert abs(default["Embed_0/embedding"].std() * math.sqrt(D) - 1) < 0.05  # N(0, 1 / width)
  assert np.abs(default["Block_0/Dense_0/kernel"]).max() > 1 / math.sqrt(D)  # lecun normal


def test_flax_init_is_the_default_and_torch_init_keeps_the_shapes():
  table = make_table("add", 7)
  model, params = _params("transformer", table)
  assert model == model_lib.Transformer(table.vocab_size, table.n, LAYERS, D, HEADS)
  _, torch_params = _params("transformer", table, init="torch")
  shapes = lambda p: jax.tree.map(np.shape, p)
  assert shapes(params) == shapes(torch_params)


def test_sinusoidal_table_is_openai_groks_formula():
  length, width = 50, D  # openai/grok's max_context_len default 50
  rows = [
    [
      math.sin(pos / (10000 ** (i / width)))
      if i % 2 == 0
      else math.cos(pos / (10000 ** ((i - 1) / width)))
      for i in range(width)
    ]
    for pos in range(length)
  ]
  np.testing.assert_allclose(
    model_lib.sinusoidal_positions(length, width), np.float32(rows), rtol=0, atol=0
  )


def test_openai_grok_last_position_block_equals_full_block():
  full = model_lib.GrokBlock(width=32, num_heads=4)
  last = model_lib.GrokBlock(width=32, num_heads=4, last_only=True)
  h = jax.random.normal(jax.random.key(1), (3, 5, 32))
  params = jax.jit(full.init)(jax.random.key(2), h)
  np.testing.assert_allclose(
    jax.jit(last.apply)(params, h)[:, 0], jax.jit(full.apply)(params, h)[:, -1], atol=1e-5
  )


def test_bad_init_is_one_line():
  cfg = config.default_config()
  cfg.model.init = "tf"
  with pytest.raises(UserError, match=r"^model.init='tf' is unknown; choose one of: flax, torch$"):
    config.validate(cfg)
  cfg = config.default_config()
  cfg.sweep.init = ("flax", "tf")
  with pytest.raises(UserError, match=r"^sweep.init='tf' is unknown; choose one of: flax, torch$"):
    config.validate(cfg)
  cfg = config.default_config()
  cfg.model.name, cfg.model.width, cfg.model.num_heads = "openai_grok", 30, 4
  with pytest.raises(UserError, match="not divisible"):
    plan.build(config.validate(cfg))


@pytest.mark.slow
def test_a_sweep_selects_openai_grok_and_trains(tiny, tmp_path):
  cfg = tiny(
    **{
      "model.name": "openai_grok",
      "steps": 60,
      "sweep.seeds": (0,),
      "sweep.train_fracs": (0.8,),
      "sweep.init": ("flax", "torch"),
    }
  )
  s = plan.build(config.validate(cfg))
  assert isinstance(s.model(0), model_lib.OpenAIGrok)
  # openai_grok has no model.init: both runs share one program
  assert len(s.programs) == 1
  workdir = sweep.run_sweep(cfg, tmp_path / "w", progress=False)
  records = logs.read_metrics(workdir / "metrics.msgpack")
  first, last = np.array(records[0]["train_loss"]), np.array(records[-1]["train_loss"])
  assert (last < first - 0.1).all(), (first, last)  # 2.07 -> 1.88: slow at width 32, but falls
  assert first[0] == first[1] and last[0] == last[1]  # model.init does not touch openai_grok


def test_a_sweep_over_init_compiles_a_program_each(tiny):
  s = plan.build(config.validate(tiny(**{"sweep.init": ("flax", "torch")})))
  assert [r["init"] for r in s.runs] == ["flax", "flax", "torch", "torch"] * 2
  assert sorted(p.static.model.weight_init for p in s.programs) == ["flax", "torch"]


# ---------------------------------------------------- openai/grok itself, in torch


def _openai_grok_in_torch(torch, vocab_len, d_model, n_layers, n_heads):
  """grok/transformer.py (openai/grok at 3d64b1d) with dropout 0 and weight_noise 0,
  its helpers inlined: AttentionHead, MultiHeadAttention, FFN (relu), DecoderBlock,
  Decoder, Transformer (embed + position_encoding, decoder, Linear without bias)."""
  nn = torch.nn

  class AttentionHead(nn.Module):
    def __init__(self, d_model, d_key):
      super().__init__()
      self.d_key = d_key
      self.Wq = nn.Linear(d_model, d_key, bias=False)
      self.Wk = nn.Linear(d_model, d_key, bias=False)
      self.Wv = nn.Linear(d_model, d_key, bias=False)

    def forward(self, x, mask):
      attn = self.Wq(x) @ self.Wk(x).transpose(-2, -1) / math.sqrt(self.d_key)
      attn = attn.masked_fill(mask == 0, float("-inf"))
      return torch.softmax(attn, dim=-1) @ self.Wv(x)

  class DecoderBlock(nn.Module):
    def __init__(self):
      super().__init__()
      d_key = int(d_model / n_heads)
      self.attn_heads = nn.ModuleList(AttentionHead(d_model, d_key) for _ in range(n_heads))
      self.Wo = nn.Linear(d_model, d_model, bias=False)
      self.self_attn_norm = nn.LayerNorm(d_model)
      self.ffn = nn.Sequential(
        nn.Linear(d_model, 4 * d_model, bias=False),
        nn.ReLU(),
        nn.Linear(4 * d_model, d_model, bias=False),
      )
      self.ffn_norm = nn.LayerNorm(d_model)

    def forward(self, x, mask):
      a1 = self.Wo(torch.cat([h(x, mask) for h in self.attn_heads], dim=-1))
      a1 = self.self_attn_norm(x + a1)
      return self.ffn_norm(a1 + self.ffn(a1))

  class Transformer(nn.Module):
    def __init__(self):
      super().__init__()
      self.embedding = nn.Embedding(vocab_len, d_model)
      self.blocks = nn.ModuleList(DecoderBlock() for _ in range(n_layers))
      self.linear = nn.Linear(d_model, vocab_len, bias=False)

    def forward(self, x):
      t = x.shape[-1]
      pe = torch.tensor(
        [
          [
            math.sin(pos / (10000 ** (i / d_model)))
            if i % 2 == 0
            else math.cos(pos / (10000 ** ((i - 1) / d_model)))
            for i in range(d_model)
          ]
          for pos in range(t)
        ]
      )
      a = self.embedding(x) + pe
      mask = torch.ones(t, t).tril()
      for block in self.blocks:
        a = block(a, mask)
      return self.linear(a)

  return Transformer()


def _port(torch_model, n_classes, n_heads) -> dict:
  """The torch model's weights as openai_grok's Flax parameters."""
  t = lambda w: w.detach().numpy().astype(np.float32)
  params = {
    "Embed_0": {"embedding": t(torch_model.embedding.weight)},
    "unembed": {"kernel": t(torch_model.linear.weight)[:n_classes].T},
  }
  for i, block in enumerate(torch_model.blocks):
    heads = block.attn_heads
    stack = lambda name, heads=heads: np.stack([t(getattr(h, name).weight).T for h in heads], 1)
    d = block.Wo.weight.shape[0]
    params[f"Block_{i}"] = {
      "self_attn": {
        "query": {"kernel": stack("Wq")},
        "key": {"kernel": stack("Wk")},
        "value": {"kernel": stack("Wv")},
        "out": {"kernel": t(block.Wo.weight).T.reshape(n_heads, d // n_heads, d)},
      },
      "ffn_in": {"kernel": t(block.ffn[0].weight).T},
      "ffn_out": {"kernel": t(block.ffn[2].weight).T},
      "self_attn_norm": {
        "scale": t(block.self_attn_norm.weight),
        "bias": t(block.self_attn_norm.bias),
      },
      "ffn_norm": {"scale": t(block.ffn_norm.weight), "bias": t(block.ffn_norm.bias)},
    }
  return params


def test_openai_grok_computes_what_openai_groks_torch_model_computes():
  """openai/grok reads the answer of `<eos> x op y = z` at the `=` position; the same
  weights in openai_grok give the same logits (over the answers) from `x op y =`."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  table = make_table("div", 13)
  eos = table.vocab_size
  ref = _openai_grok_in_torch(torch, table.vocab_size + 1, 32, 2, 4).eval()
  ours = model_lib.OpenAIGrok(table.vocab_size, table.n, num_layers=2, width=32, num_heads=4)
  params = _port(ref, table.n, 4)
  want_shapes = jax.tree.map(
    np.shape, jax.jit(ours.init)(jax.random.key(0), jnp.asarray(table.inputs[:1]))["params"]
  )
  assert jax.tree.map(np.shape, params) == want_shapes
  inputs = table.inputs[::7]
  seq = np.concatenate([np.full((len(inputs), 1), eos), inputs, table.labels[::7, None]], 1)
  with torch.no_grad():
    want = ref(torch.as_tensor(seq, dtype=torch.long))[:, 4, : table.n].numpy()
  got = logits_of(ours, params, jnp.asarray(inputs))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_torch_own_default_init_passes_the_same_checks():
  """The statistics the init tests demand hold for torch's own nn.Linear/nn.Embedding."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  table = make_table("div", 97)
  ref = _openai_grok_in_torch(torch, table.vocab_size + 1, D, LAYERS, HEADS)
  _check_torch_init(_flat(_port(ref, table.n, HEADS)), table.vocab_size + 1)
