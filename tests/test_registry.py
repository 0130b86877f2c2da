"""grokjax.registry: one declaration per method, optimizer, loss, model and measure,
and everything derived from it (config, validation, sweep axes, runs.json, programs)."""

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grokjax import config, devices, logs, plan, registry, sweep
from grokjax.errors import UserError
from grokjax.registry import Key, Method

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scratch():
  """The registries as they are; whatever a test registers is gone afterwards."""
  saved = [(table, dict(table)) for table in registry._KINDS.values()]
  yield registry
  for table, before in saved:
    table.clear()
    table.update(before)


def scaled(factor):
  """A per-run gradient filter: g -> factor * g."""
  return optax.GradientTransformation(
    lambda params: optax.EmptyState(),
    lambda g, state, params=None: (jax.tree.map(lambda x: factor * x, g), state),
  )


def test_every_key_is_a_config_key_a_sweep_axis_and_a_run_field(tiny):
  cfg = config.default_config()
  runs = plan.build(tiny()).runs
  for key in config.run_keys():
    node = cfg
    for part in key.path.split("."):
      node = node[part]
    assert node == key.default, key.path
    assert cfg.sweep[key.field] == (), key.field
    assert key.field in runs[0], key.field
  assert {"lr", "grokfast_window", "model", "loss", "optimizer", "num_heads"} <= set(cfg.sweep)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"optim.lr": float("inf")}, r"optim.lr=inf must be a finite number"),
    ({"optim.lr": -1.0}, r"optim.lr=-1.0 must be > 0; fix --config.optim.lr"),
    ({"method.grokfast_alpha": 1.5}, r"must be in \[0, 1\)"),
    ({"sweep.orthograd": (True, 1)}, r"sweep.orthograd=1 is not a bool"),
    ({"sweep.lr": ("fast",)}, r"sweep.lr='fast' is not a float; write e.g. --config.sweep.lr=0.5"),
    (
      {"method.loss": "hinge"},
      r"method.loss='hinge' is unknown; choose one of: softmax, stablemax",
    ),
    ({"model.name": "lstm"}, r"model.name='lstm' is unknown; choose one of: transformer, mlp"),
    ({"sweep.weight_decay": (0.1, -2.0)}, r"sweep.weight_decay=-2.0 must be >= 0"),
    ({"sweep.grokfast_window": (0,)}, r"sweep.grokfast_window=0 must be > 0"),
  ],
)
def test_validation_comes_from_the_declarations(tiny, overrides, message):
  with pytest.raises(UserError, match=message):
    config.validate(tiny(**overrides))


def test_a_string_sweep_of_a_static_key_parses_a_comma_list(tiny):
  # --config.sweep.model=transformer,mlp reaches the config as ("transformer,mlp",)
  cfg = config.validate(tiny(**{"sweep.model": ("transformer, mlp",)}))
  assert cfg.sweep.model == ("transformer", "mlp")


def test_register_refuses_clashes(scratch):
  with pytest.raises(ValueError, match="is registered"):
    scratch.register(Method("orthograd"))
  with pytest.raises(ValueError, match="declared differently"):
    scratch.register(Method("mine", (Key("optim.lr", 0.1, per_run=True),)))
  with pytest.raises(ValueError, match="taken by"):
    scratch.register(Method("mine", (Key("method.lr", 0.1, per_run=True),)))
  with pytest.raises(ValueError, match="numbers only"):
    scratch.register(Method("mine", (Key("method.how", "x", per_run=True),)))
  with pytest.raises(TypeError, match="cannot register"):
    scratch.register(object())
  scratch.register(Method("orthograd"), replace=True)  # allowed when asked for


def test_the_old_separate_flag_is_named_and_dropped():
  with pytest.warns(FutureWarning, match="separate= is no longer needed") as caught:
    m = Method("mine", separate=True)
  assert len(caught) == 1 and "\n" not in str(caught[0].message)
  # not a field: every method's runs train in a program of their own
  assert "separate" not in {f.name for f in dataclasses.fields(m)}


@pytest.mark.slow
def test_a_user_method_is_one_declaration(scratch, tiny, tmp_path):
  scratch.register(
    Method(
      "scaled",
      (Key("method.scale", 1.0, "gradient factor", lambda v: v > 0, "> 0", per_run=True),),
      gradient=lambda scale: scaled(scale),
      active=lambda v: v["scale"] != 1.0,
    )
  )
  cfg = tiny(**{"sweep.train_fracs": (0.5,), "sweep.scale": (1.0, 0.5)})
  assert config.default_config().method.scale == 1.0
  with pytest.raises(UserError, match="sweep.scale=0.0 must be > 0"):
    plan.build(tiny(**{"sweep.scale": (0.0,)}))
  s = plan.build(cfg)
  assert [r["scale"] for r in s.runs] == [1.0, 1.0, 0.5, 0.5]
  assert len(s.programs) == 2  # the baseline's program does not carry the method
  assert [len(p.static.methods) for p in s.programs] == [0, 1]
  workdir = sweep.run_sweep(cfg, tmp_path / "w", progress=False)
  assert [r["scale"] for r in json.loads((workdir / "runs.json").read_text())] == [1, 1, 0.5, 0.5]
  # Halving every gradient is Adam-invariant (up to epsilon): the same curves.
  last = logs.read_metrics(workdir / "metrics.msgpack")[-1]
  np.testing.assert_allclose(last["train_loss"][:2], last["train_loss"][2:], rtol=1e-3)


@pytest.mark.slow
def test_each_set_of_methods_and_static_settings_trains_in_a_program_of_its_own(
  tiny, tmp_path, caplog
):
  cfg = tiny(
    **{
      "sweep.train_fracs": (0.5,),
      "sweep.seeds": (0,),
      "sweep.grokfast_ma_lamb": (0.0, 5.0),
      "sweep.grokfast_lamb": (0.0, 2.0, 3.0),
      "method.grokfast_window": 7,
    }
  )
  s = plan.build(cfg)
  uses = lambda k: (s.runs[k]["grokfast_ma_lamb"] > 0, s.runs[k]["grokfast_lamb"] > 0)
  assert len(s.programs) == 4 and len(s.runs) == 6
  for prog in s.programs:
    (used,) = {uses(k) for k in prog.runs}
    assert [m.name for m in prog.static.methods] == [
      n for n, on in zip(("grokfast_ema", "grokfast_ma"), used[::-1]) if on
    ]
  # EMA's strengths 2 and 3 (per-run) share a program: one run each
  assert sorted(len(p.runs) for p in s.programs) == [1, 1, 2, 2]
  table, runs = devices.device_inputs(s)
  for prog, r, (init, _) in zip(s.programs, runs, devices.sweep_fns(s)):
    leaves = [x.shape for x in jax.tree.leaves(jax.eval_shape(init, table, r).opt_state)]
    params = jax.tree.leaves(jax.eval_shape(init, table, r).params)
    window = (len(r.seed), 7, *params[0].shape[1:])
    # Grokfast-MA's window of gradients exists only where its runs are, and a program
    # without a method holds AdamW's state alone: two moments per parameter (EMA: one
    # more; MA: the window, its sum and the gradient leaving it).
    ma, ema = uses(prog.runs[0])
    assert (window in leaves) == ma
    size = lambda shapes: sum(np.prod(x) for x in shapes)
    copies = size(leaves) / size(x.shape for x in params)  # of the parameters, and counters
    want = 2 + ema + (7 + 2) * ma
    assert want <= copies < want + 0.01, copies
  with jax.log_compiles(), caplog.at_level("WARNING", logger="jax"):
    sweep.run_sweep(cfg, tmp_path / "w", progress=False)
  compiled = [
    r for r in caplog.records if r.getMessage().startswith("Finished XLA compilation of jit(chunk)")
  ]
  assert len(compiled) == 4  # one compiled program per set of methods
  records = logs.read_metrics(tmp_path / "w" / "metrics.msgpack")
  assert all(len(r["val_acc"]) == 6 and np.isfinite(r["val_acc"]).all() for r in records)


@pytest.mark.slow
def test_models_of_one_sweep_log_their_own_module_norms(tiny, tmp_path):
  cfg = tiny(
    **{"sweep.train_fracs": (0.5,), "sweep.seeds": (0,), "sweep.model": ("transformer", "mlp")}
  )
  workdir = sweep.run_sweep(cfg, tmp_path / "w", progress=False)
  last = logs.read_metrics(workdir / "metrics.msgpack")[-1]
  assert np.isfinite(last["param_norm/Block_0"][0]) and np.isnan(last["param_norm/Block_0"][1])
  assert np.isnan(last["param_norm/Dense_0"][0]) and np.isfinite(last["param_norm/Dense_0"][1])


def test_the_config_table_in_the_docs_is_the_declarations():
  doc = (ROOT / "docs" / "configs.md").read_text()
  assert config.table_markdown() in doc, "regenerate: python -m grokjax.config docs/configs.md"
  for key in config.all_keys():
    assert f"`{key.path}`" in doc


def test_a_model_declares_its_keys(scratch, tiny):
  class Linear(nn.Module):
    vocab_size: int
    num_classes: int
    width: int

    @nn.compact
    def __call__(self, tokens):
      e = nn.Embed(self.vocab_size, self.width)(tokens)
      return nn.Dense(self.num_classes)(e.reshape(len(tokens), -1))

  from grokjax.model import WIDTH

  scratch.register(registry.Model("linear", (WIDTH,), Linear))
  s = plan.build(tiny(**{"model.name": "linear"}))
  params = jax.jit(s.model(0).init)(jax.random.key(0), jnp.asarray(s.table.inputs[:2]))["params"]
  assert params["Embed_0"]["embedding"].shape == (s.table.vocab_size, 32)
