"""The later papers' own settings (issue 20, item 3): Prieto et al.'s bias-free one-hot
MLP and float64 StableMax, Nanda et al.'s one-layer transformer, Liu et al.'s
per-module (embedding) lr and weight decay, each checked against formulas, numpy or
a hand-written optax chain; and every switch at its default leaves today's numbers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import logits_of, tiny_config

from grokjax import config, data, fourier, interp, losses, optim, plan, registry, rundir, sweep
from grokjax.errors import UserError
from grokjax.model import make_model

P = 113


def _model(name, table, **keys):
  cfg = config.default_config().model.to_dict()
  return make_model({**cfg, "name": name, **keys}, table.vocab_size, table.n)


def _params(m, table, seed=0):
  return jax.jit(m.init)(jax.random.key(seed), table.inputs[:2])["params"]


# --- Prieto et al.'s MLP: no biases, one-hot x and y --------------------------------------------


def prieto_mlp(table):
  return _model("mlp", table, num_layers=2, width=200, init="torch", bias=False, one_hot="x_y")


def test_mlp_without_biases_has_none_and_matches_numpy():
  table = data.make_table("add", P)
  m = prieto_mlp(table)
  params = _params(m, table)
  shapes = jax.tree.map(lambda x: x.shape, params)
  # Prieto et al.'s MLP(input_size=2p, hidden_sizes=[200, 200], output_size=p, bias=False)
  assert shapes == {
    "Dense_0": {"kernel": (2 * P, 200)},
    "Dense_1": {"kernel": (200, 200)},
    "unembed": {"kernel": (200, P)},
  }
  # torch.nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  for name, fan_in in (("Dense_0", 2 * P), ("Dense_1", 200), ("unembed", 200)):
    k = np.asarray(params[name]["kernel"])
    assert np.abs(k).max() <= 1 / np.sqrt(fan_in)
    assert k.var() == pytest.approx(1 / (3 * fan_in), rel=0.05)
  rows = np.random.default_rng(0).choice(len(table.labels), 64, replace=False)
  x, y = table.inputs[rows, 0], table.inputs[rows, 2]
  w = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
  h = np.concatenate([np.eye(P)[x], np.eye(P)[y]], 1)  # cat(one_hot(x, p), one_hot(y, p))
  h = np.maximum(h @ w["Dense_0"], 0)
  want = np.maximum(h @ w["Dense_1"], 0) @ w["unembed"]
  got = logits_of(m, params, table.inputs[rows])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mlp_x_y_reads_no_op_token():
  table = data.make_table("add", 7)
  m = _model("mlp", table, width=16, bias=False, one_hot="x_y")
  params = _params(m, table)
  other_op = table.inputs.copy()
  other_op[:, 1] = data.op_token("mul", table.n)
  np.testing.assert_array_equal(logits_of(m, params, table.inputs), logits_of(m, params, other_op))


def test_mlp_defaults_are_todays():
  """model.bias=True and model.one_hot=x_op_y: the parameters of before the switches."""
  table = data.make_table("add", 7)
  cfg = config.default_config()
  assert cfg.model.bias is True and cfg.model.one_hot == "x_op_y"
  m = _model("mlp", table, width=16)
  shapes = jax.tree.map(lambda x: x.shape, _params(m, table))
  v = table.vocab_size
  assert shapes == {
    "Dense_0": {"kernel": (3 * v, 16), "bias": (16,)},
    "Dense_1": {"kernel": (16, 16), "bias": (16,)},
    "unembed": {"kernel": (16, 7), "bias": (7,)},
  }
  # the same numbers as the MLP of before the switches (its code, copied here)
  old = OldMLP(v, 7, 2, 16)
  x = table.inputs[:9]
  a, b = _params(old, table), _params(m, table)
  for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(u, w)
  np.testing.assert_array_equal(logits_of(old, a, x), logits_of(m, b, x))


class OldMLP(nn.Module):
  """grokjax.model.MLP before model.bias and model.one_hot (Flax's init)."""

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


def test_one_hot_choice_is_checked():
  cfg = tiny_config(**{"model.name": "mlp", "model.one_hot": "x_and_y"})
  with pytest.raises(UserError, match="model.one_hot"):
    config.validate(cfg)


# --- Nanda et al.'s one-layer transformer ---------------------------------------------------


def nanda_shapes(p=P, d=128, heads=4, d_mlp=512):
  """Their parameters (progress-measures-paper transformers.py, Config defaults), in
  grokjax's layout: W_E [d, p+1] -> embedding [p+1, d]; W_Q/K/V [heads, d_head, d] ->
  kernel [d, heads, d_head]; W_O [d, heads d_head] -> kernel [heads, d_head, d];
  W_in [d_mlp, d] -> kernel [d, d_mlp]; W_out [d, d_mlp] -> kernel [d_mlp, d];
  W_U [d, p+1] -> kernel [d, p+1]."""
  h = d // heads
  return {
    "Embed_0": {"embedding": (p + 1, d)},
    "pos_embed": (3, d),
    "Block_0": {
      "Attention_0": {
        "query": {"kernel": (d, heads, h)},
        "key": {"kernel": (d, heads, h)},
        "value": {"kernel": (d, heads, h)},
        "out": {"kernel": (heads, h, d)},
      },
      "Dense_0": {"kernel": (d, d_mlp), "bias": (d_mlp,)},
      "Dense_1": {"kernel": (d_mlp, d), "bias": (d,)},
    },
    "unembed": {"kernel": (d, p + 1)},
  }


def test_nanda_shapes_count_and_no_layernorm():
  table = data.make_table("add", P)
  m = _model("nanda", table, width=128, num_heads=4)
  params = _params(m, table)
  assert jax.tree.map(lambda x: x.shape, params) == nanda_shapes()
  # their count: d(p+1) + 3d + 4d^2 (W_Q, W_K, W_V, W_O) + 2 d d_mlp + d_mlp + d + d(p+1)
  assert sum(x.size for x in jax.tree.leaves(params)) == 226_816
  called = []

  def record(next_fun, args, kwargs, ctx):
    called.append(type(ctx.module).__name__)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    logits = logits_of(m, params, table.inputs[:5])
  assert "LayerNorm" not in called and "Dense" in called
  assert logits.shape == (5, P + 1)  # d_vocab logits, as their loss takes them


def test_nanda_init_is_theirs():
  table = data.make_table("add", P)
  params = _params(_model("nanda", table), table, seed=3)
  std = lambda x: float(np.asarray(x).std())
  d = 128
  b = params["Block_0"]
  for x in (
    params["Embed_0"]["embedding"],
    params["pos_embed"],
    *(b["Attention_0"][k]["kernel"] for k in ("query", "key", "value", "out")),
    b["Dense_0"]["kernel"],
    b["Dense_1"]["kernel"],  # W_out: randn / sqrt(d_model), not sqrt(d_mlp)
  ):
    assert std(x) == pytest.approx(1 / np.sqrt(d), rel=0.06)
  assert std(params["unembed"]["kernel"]) == pytest.approx(1 / np.sqrt(P + 1), rel=0.05)
  assert not np.asarray(b["Dense_0"]["bias"]).any() and not np.asarray(b["Dense_1"]["bias"]).any()
  # untruncated normal (torch.randn): some weights beyond 2 sigma
  e = np.asarray(params["Embed_0"]["embedding"]) * np.sqrt(d)
  assert (np.abs(e) > 2).mean() == pytest.approx(0.0455, abs=0.01)


def nanda_numpy(params, tokens_Bx3, heads=4):
  """Their Transformer.forward (use_ln=False) in float64 numpy, every position, from
  their parameters' layout: W_E[:, x], + W_pos, causal attention, ReLU MLP, W_U."""
  f = lambda x: np.asarray(x, np.float64)
  W_E = f(params["Embed_0"]["embedding"]).T  # [d, V]
  W_pos = f(params["pos_embed"])
  a = params["Block_0"]["Attention_0"]
  W_Q, W_K, W_V = (f(a[k]["kernel"]).transpose(1, 2, 0) for k in ("query", "key", "value"))
  W_O = f(a["out"]["kernel"]).reshape(-1, W_E.shape[0]).T  # [d, heads * d_head]
  mlp = params["Block_0"]
  W_in, b_in = f(mlp["Dense_0"]["kernel"]).T, f(mlp["Dense_0"]["bias"])
  W_out, b_out = f(mlp["Dense_1"]["kernel"]).T, f(mlp["Dense_1"]["bias"])
  W_U = f(params["unembed"]["kernel"])
  x = W_E[:, tokens_Bx3].transpose(1, 2, 0) + W_pos  # [B, 3, d]
  k, q, v = (np.einsum("ihd,bpd->biph", W, x) for W in (W_K, W_Q, W_V))
  scores = np.einsum("biph,biqh->biqp", k, q) / np.sqrt(k.shape[-1])
  scores = np.where(np.tril(np.ones((3, 3))) > 0, scores, -np.inf)
  attn = np.exp(scores - scores.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  z = np.einsum("biph,biqp->biqh", v, attn)
  z = z.transpose(0, 2, 1, 3).reshape(z.shape[0], 3, -1)  # b q (i h)
  x = x + np.einsum("df,bqf->bqd", W_O, z)
  pre = np.einsum("md,bpd->bpm", W_in, x) + b_in
  x = x + np.einsum("dm,bpm->bpd", W_out, np.maximum(pre, 0)) + b_out
  return (x @ W_U)[:, -1]


def test_nanda_forward_matches_their_formulas():
  table = data.make_table("add", 31)
  m = _model("nanda", table, width=32, num_heads=4)
  params = _params(m, table, seed=1)
  # a trained-looking model: larger weights than at init
  params = jax.tree.map(lambda x: 3 * x + 0.1, params)
  rows = np.arange(0, len(table.labels), 7)
  tokens = np.stack([table.inputs[rows, 0], table.inputs[rows, 2], np.full(len(rows), 31)], 1)
  got = logits_of(m, params, table.inputs[rows])
  np.testing.assert_allclose(got, nanda_numpy(params, tokens), rtol=2e-4, atol=2e-4)


def test_nanda_reads_x_y_equals_only():
  table = data.make_table("add", 7)
  m = _model("nanda", table, width=16, num_heads=2)
  params = _params(m, table)
  other = table.inputs.copy()
  other[:, 1] = data.op_token("sub", table.n)
  np.testing.assert_array_equal(logits_of(m, params, table.inputs), logits_of(m, params, other))


def test_progress_measures_read_nanda():
  """grokjax.fourier reads its embedding (``Embed_0``), neurons (the input of the
  MLP's output Dense, at the last position) and W_L = W_out W_U (no LayerNorm)."""
  table = data.make_table("add", 13)
  m = _model("nanda", table, width=32, num_heads=4)
  params = _params(m, table)
  out = fourier.forward(m, params, jnp.asarray(table.inputs))
  b = params["Block_0"]
  np.testing.assert_allclose(
    out.w_l, b["Dense_1"]["kernel"] @ params["unembed"]["kernel"], rtol=1e-6
  )
  x = jnp.asarray(table.inputs[:4])
  h_pre = out.neurons[:4]
  assert h_pre.shape == (4, 4 * 32) and (np.asarray(out.neurons) >= 0).all()  # after ReLU
  # logits = neurons @ W_L + the rest (attention path and biases): W_L carries the MLP's share
  _ = x


@pytest.mark.slow
def test_nanda_sweep_and_its_progress_measures(tmp_path):
  cfg = tiny_config(
    **{
      "model.name": "nanda",
      "sweep.train_fracs": (0.8,),
      "sweep.seeds": (0,),
      "steps": 20,
      "checkpoint_every": 10,
      "checkpoint_keep": 5,
    }
  )
  workdir = tmp_path / "run"
  sweep.run_sweep(cfg, workdir, progress=False)
  m = interp.compute(rundir.load(workdir))
  assert m.values["embed_norms"].shape[-1] == 4  # p = 7: frequencies 0..3
  assert np.isfinite(m.values["restricted_loss"]).all()


# --- float64 losses -------------------------------------------------------------------------


def collapsed_logits():
  """StableMax logits whose float32 loss is exactly 0 (the correct class's s = 1e6 + 1
  absorbs the others' sum, 1e-4), while float64 sees ~1e-10."""
  z = np.full((3, 101), -1e6, np.float32)
  z[np.arange(3), [0, 5, 100]] = 1e6
  z[1, 7] = -1e3  # one class nearer: a larger share (still absorbed in float32)
  return z, np.array([0, 5, 100], np.int32)


def stablemax_numpy(z, y):
  z = z.astype(np.float64)
  s = np.where(z >= 0, z + 1, 1 / (1 - np.minimum(z, 0)))
  total = s.sum(-1)
  loss = np.log(total) - np.log(s[np.arange(len(y)), y])
  ds = np.where(z >= 0, 1.0, 1 / (1 - np.minimum(z, 0)) ** 2)
  grad = ds / total[:, None]
  grad[np.arange(len(y)), y] -= ds[np.arange(len(y)), y] / s[np.arange(len(y)), y]
  return loss, grad


def test_float64_stablemax_gives_float64_results():
  z, y = collapsed_logits()
  want_loss, want_grad = stablemax_numpy(z, y)
  loss32 = losses.stablemax_cross_entropy(jnp.asarray(z), jnp.asarray(y))
  assert (np.asarray(loss32) == 0).all()  # float32: softmax (stablemax) collapse
  f = jax.jit(lambda z: losses.stablemax_cross_entropy(z, jnp.asarray(y), float64=True))
  loss64 = f(jnp.asarray(z))
  assert loss64.dtype == jnp.float32  # back in the model's dtype
  assert (np.asarray(loss64) > 0).all()
  np.testing.assert_allclose(loss64, want_loss, rtol=1e-6)
  # the gradient too: the correct class's, exactly 0 in float32, is not in float64
  g32 = jax.grad(lambda z: losses.stablemax_cross_entropy(z, jnp.asarray(y)).sum())(z)
  g64 = jax.jit(jax.grad(lambda z: f(z).sum()))(jnp.asarray(z))
  picked = (np.arange(3), y)
  assert (np.asarray(g32)[picked] == 0).all() and (np.asarray(g64)[picked] < 0).all()
  # (the correct class's is 1/sum - 1/s_y: a cancellation, to ~1e-6 relative in float64 too)
  np.testing.assert_allclose(g64, want_grad.astype(np.float32), rtol=1e-5, atol=0)


def test_float64_softmax_matches_numpy_and_vmaps():
  z = np.random.default_rng(0).normal(0, 30, (2, 5, 11)).astype(np.float32)
  y = np.array([[0, 3, 10, 2, 2], [1, 1, 4, 9, 0]], np.int32)
  z64 = z.astype(np.float64)
  lse = np.log(np.exp(z64 - z64.max(-1, keepdims=True)).sum(-1)) + z64.max(-1)
  want = lse - np.take_along_axis(z64, y[..., None], -1)[..., 0]
  f = lambda z, y: losses.softmax_cross_entropy(z, y, float64=True)
  got = jax.jit(jax.vmap(f))(jnp.asarray(z), jnp.asarray(y))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  g = jax.jit(jax.vmap(jax.grad(lambda z, y: f(z, y).sum())))(jnp.asarray(z), jnp.asarray(y))
  p = np.exp(z64 - lse[..., None])
  np.put_along_axis(p, y[..., None], np.take_along_axis(p, y[..., None], -1) - 1, -1)
  np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-7)


def test_float64_off_is_the_float32_loss():
  z, y = collapsed_logits()
  z = z / 1e5
  for name in ("softmax", "stablemax"):
    fn = registry.LOSSES[name].fn
    plain = optax.softmax_cross_entropy_with_integer_labels if name == "softmax" else None
    off = fn(jnp.asarray(z), jnp.asarray(y), float64=False)
    assert off.dtype == jnp.float32
    if plain is not None:
      np.testing.assert_array_equal(off, plain(jnp.asarray(z), jnp.asarray(y)))


def test_prieto_setting_trains_with_float64_stablemax(tmp_path):
  """The whole setting in one tiny sweep: bias-free x_y MLP, StableMax in float64 in
  training (jitted, vmapped) and a float64 evaluation, Adam eps 1e-25, no decay."""
  cfg = tiny_config(
    **{
      "model.name": "mlp",
      "model.bias": False,
      "model.one_hot": "x_y",
      "model.init": "torch",
      "model.width": 32,
      "method.loss": "stablemax",
      "loss.float64": True,
      "optim.lr": 0.01,
      "optim.eps": 1e-25,
      "optim.b2": 0.999,
      "optim.weight_decay": 0.0,
      "eval_float64": True,
      "sweep.train_fracs": (0.4,),
      "steps": 30,
      "batch_size": 1000,
    }
  )
  from grokjax import logs

  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  last = logs.read_metrics(workdir / "metrics.msgpack")[-1]
  assert np.isfinite(last["train_loss"]).all()
  assert (np.asarray(last["train_acc"]) > 0.5).all()


# --- Adam's eps 1e-25 in float32 -----------------------------------------------------------------


def test_eps_1e25_is_accepted_and_works_in_float32():
  cfg = tiny_config(**{"optim.eps": 1e-25})
  assert config.validate(cfg).optim.eps == 1e-25
  assert np.float32(1e-25) > 0  # a normal float32 (the smallest is 1.2e-38)
  s = plan.build(cfg)
  assert plan.run_arrays(s, s.programs[0]).hparams["eps"][0] == np.float32(1e-25)
  tx = optax.scale_by_adam(0.9, 0.999, jnp.float32(1e-25))
  g = {"w": jnp.asarray([3e-6, -2.0, 0.0], jnp.float32)}
  u, _ = tx.update(g, tx.init(g))
  # first step: m_hat / (sqrt(v_hat) + eps) = sign(g), and 0 where g = 0 (no 0/0)
  np.testing.assert_allclose(u["w"], [1.0, -1.0, 0.0], rtol=1e-5)


# --- Liu et al.'s embedding lr and weight decay ----------------------------------------------


def adamw_values(**kw):
  """The adamw make's keyword values at the config defaults (and ``kw``)."""
  cfg = config.default_config()
  entry = registry.OPTIMIZERS["adamw"]
  values = {}
  for k in entry.keys:
    section, name = k.path.split(".", 1)
    values[k.field] = cfg[section][name]
  return {**values, **kw}


def transformer_params():
  table = data.make_table("add", 7)
  m = _model("transformer", table, width=16, num_heads=2, num_layers=1)
  params = _params(m, table)
  grads = jax.tree.map(
    lambda x: jnp.sin(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape), params
  )
  return params, grads


def steps(tx, params, grads, n=3):
  """n updates with the same gradients (jitted); the parameters after each."""
  state = tx.init(params)
  out = []
  for _ in range(n):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


def test_embed_lr_and_weight_decay_change_only_the_embeddings_update():
  params, grads = transformer_params()
  v = adamw_values(lr=1e-3, weight_decay=1.0, warmup_steps=2)
  sep = registry.OPTIMIZERS["adamw"].make((), **{**v, "embed_lr": 1e-2, "embed_weight_decay": 0.0})
  got, _ = steps(sep, params, grads)

  def hand(lr, wd):
    """torch AdamW's step as an optax chain, with grokjax's linear warmup."""
    return optax.chain(
      optax.scale_by_adam(v["b1"], v["b2"], v["eps"]),
      optax.add_decayed_weights(wd),
      optax.scale(-lr),
      optax.scale_by_schedule(optim.warmup(2)),
    )

  rest, _ = steps(hand(1e-3, 1.0), params, grads)
  embed, _ = steps(hand(1e-2, 0.0), params, grads)
  for g, r, e in zip(got, rest, embed):
    for name in g:
      want = e if name.startswith("Embed") else r
      for a, b in zip(jax.tree.leaves(g[name]), jax.tree.leaves(want[name])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=name)
  # and the embedding moved differently from a run without the keys
  plain, _ = steps(registry.OPTIMIZERS["adamw"].make((), **v), params, grads)
  assert not np.allclose(plain[-1]["Embed_0"]["embedding"], got[-1]["Embed_0"]["embedding"])
  np.testing.assert_array_equal(
    plain[-1]["Block_0"]["Dense_0"]["kernel"], got[-1]["Block_0"]["Dense_0"]["kernel"]
  )


def test_embed_keys_at_their_defaults_are_todays_adamw_bit_for_bit():
  """The sentinel -1 gives the chain grokjax had before the keys, bit for bit, with the
  same state tree (checkpoints restore across the change); traced, as in a sweep."""
  params, grads = transformer_params()
  for decoupled, to_init in ((True, False), (False, False), (True, True)):
    v = adamw_values(decoupled=decoupled, decay_to_init=to_init)
    assert v["embed_lr"] == -1.0 and v["embed_weight_decay"] == -1.0
    traced = {
      k: jnp.float32(x)
      for k, x in v.items()
      if k in ("lr", "weight_decay", "eps", "embed_lr", "embed_weight_decay")
    }
    new = registry.OPTIMIZERS["adamw"].make((), **{**v, **traced})

    def old_decay(weight_decay, to_init=to_init):
      def init(params):
        return optim.DecayState(params if to_init else None)

      def update(updates, state, params):
        if state.init_params is None:
          return jax.tree.map(lambda u, p: u + weight_decay * p, updates, params), state
        decay = lambda u, p, p0: u + weight_decay * (p - p0)
        return jax.tree.map(decay, updates, params, state.init_params), state

      return optax.GradientTransformation(init, update)

    adam = optax.scale_by_adam(v["b1"], v["b2"], traced["eps"])
    decay = old_decay(traced["weight_decay"])
    parts = [adam, decay] if decoupled else [decay, adam]
    old = optax.chain(
      optax.chain(*parts, optax.scale(-traced["lr"])),
      optax.scale_by_schedule(optim.warmup(v["warmup_steps"])),
    )
    got, got_state = steps(new, params, grads)
    want, want_state = steps(old, params, grads)
    assert jax.tree.structure(got_state) == jax.tree.structure(want_state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)


def test_embed_keys_are_per_run_and_checked(tmp_path):
  cfg = tiny_config(**{"sweep.train_fracs": (0.8,), "sweep.seeds": (0,), "steps": 10})
  cfg.sweep.embed_lr = (-1.0, 0.0)  # the same as optim.lr; a frozen embedding
  s = plan.build(cfg)
  assert len(s.programs) == 1  # per run: one program
  np.testing.assert_array_equal(plan.run_arrays(s, s.programs[0]).hparams["embed_lr"], [-1, 0])
  rd = rundir.load(sweep.run_sweep(cfg, tmp_path / "run", progress=False))
  start, end = rd.params(0), rd.params()
  embed = lambda params, k: params[k]["Embed_0"]["embedding"]
  assert not np.array_equal(embed(start, 0), embed(end, 0))  # lr 1e-3
  np.testing.assert_array_equal(embed(start, 1), embed(end, 1))  # lr 0: frozen
  dense = lambda params, k: params[k]["unembed"]["kernel"]
  assert not np.array_equal(dense(start, 1), dense(end, 1))  # the rest trains
  bad = tiny_config(**{"optim.embed_weight_decay": -0.5})
  with pytest.raises(UserError, match="optim.embed_weight_decay"):
    config.validate(bad)
