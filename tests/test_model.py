import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grokjax import model as model_lib
from grokjax.config import default_config
from grokjax.data import make_table
from grokjax.errors import UserError


def test_paper_model_size_and_shapes():
  # Shapes only: traced abstractly (jax.eval_shape), nothing computed.
  table = make_table("div", 97)
  model = model_lib.make_model(default_config().model, table.vocab_size, table.n)
  params = jax.eval_shape(model.init, jax.random.key(0), table.inputs[:2])["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  assert 3.8e5 < n_params < 4.6e5  # ~4.2e5, as in the paper's setting
  logits = jax.eval_shape(model.apply, {"params": params}, table.inputs[:5])
  assert logits.shape == (5, 97)


@pytest.mark.slow
def test_last_position_block_equals_full_causal_block():
  block_full = model_lib.Block(width=32, num_heads=4)
  block_last = model_lib.Block(width=32, num_heads=4, last_only=True)
  h = jax.random.normal(jax.random.key(1), (3, 4, 32))
  params = jax.jit(block_full.init)(jax.random.key(2), h)
  full = jax.jit(block_full.apply)(params, h)
  last = jax.jit(block_last.apply)(params, h)
  assert last.shape == (3, 1, 32)
  np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_causal_mask_hides_later_positions():
  block = model_lib.Block(width=16, num_heads=2)
  h = jax.random.normal(jax.random.key(1), (1, 4, 16))
  params = jax.jit(block.init)(jax.random.key(2), h)
  changed = h.at[:, 3].set(0.0)
  np.testing.assert_allclose(
    jax.jit(block.apply)(params, h)[:, :3], jax.jit(block.apply)(params, changed)[:, :3], rtol=1e-6
  )


@pytest.mark.slow
def test_answer_depends_on_both_operands():
  table = make_table("add", 7)
  cfg = default_config().model
  model = model_lib.make_model(cfg, table.vocab_size, table.n)
  params = jax.jit(model.init)(jax.random.key(0), table.inputs[:1])
  x = jnp.asarray(table.inputs[:1])
  base = jax.jit(model.apply)(params, x)
  for pos in (0, 2):
    other = x.at[0, pos].set((x[0, pos] + 1) % 7)
    assert not np.allclose(jax.jit(model.apply)(params, other), base)


def test_bad_model_configs():
  cfg = default_config().model
  cfg.name = "lstm"
  with pytest.raises(UserError, match="unknown model.name 'lstm'"):
    model_lib.make_model(cfg, 10, 7)
  for name in ("transformer", "openai_grok"):
    cfg = default_config().model
    cfg.name, cfg.width = name, 30
    with pytest.raises(UserError, match="not divisible"):
      model_lib.make_model(cfg, 10, 7)


def test_models_share_their_keys():
  from grokjax import registry

  shared = (model_lib.NUM_LAYERS, model_lib.WIDTH, model_lib.NUM_HEADS)
  assert registry.MODELS["openai_grok"].keys == shared
  assert registry.MODELS["transformer"].keys == (*shared, model_lib.INIT)
  assert model_lib.INIT.default == "flax" and model_lib.INIT.options() == ("flax", "torch")
