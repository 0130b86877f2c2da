"""Grokfast, ⊥Grad, StableMax, weight-norm control, the MLP, and variants side by side."""

import json
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import logits_of

from grokjax import config, logs, losses, optim, plan, registry, report, sweep
from grokjax.config import default_config
from grokjax.model import make_model

PARAMS = {"a": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.3, -0.7, 1.1])}


def _grads(rng, n):
  return [
    jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), PARAMS)
    for _ in range(n)
  ]


def test_grokfast_ema_against_numpy():
  alpha, lamb = 0.9, 2.0
  tx = optim.grokfast_ema(alpha, lamb)
  state = tx.init(PARAMS)
  ema = None
  for g in _grads(np.random.default_rng(0), 6):
    out, state = tx.update(g, state)
    g = jax.tree.map(np.asarray, g)
    ema = g if ema is None else jax.tree.map(lambda e, x: alpha * e + (1 - alpha) * x, ema, g)
    for o, x, e in zip(jax.tree.leaves(out), jax.tree.leaves(g), jax.tree.leaves(ema)):
      np.testing.assert_allclose(o, x + lamb * e, rtol=1e-5, atol=1e-6)


def test_grokfast_ma_against_numpy():
  size, lamb = 3, 5.0
  tx = optim.grokfast_ma(size, lamb)
  state = tx.init(PARAMS)
  window = deque(maxlen=size)
  for g in _grads(np.random.default_rng(1), 7):
    out, state = tx.update(g, state)
    window.append(jax.tree.map(np.asarray, g))
    for k, o in enumerate(jax.tree.leaves(out)):
      x = jax.tree.leaves(window[-1])[k]
      mean = np.mean([jax.tree.leaves(w)[k] for w in window], axis=0)
      expected = x + lamb * mean if len(window) == size else x  # only once the window is full
      np.testing.assert_allclose(o, expected, rtol=1e-5, atol=1e-5)


def test_orthogonal_grad():
  g = _grads(np.random.default_rng(2), 1)[0]
  out, _ = optim.orthogonal_grad(True).update(g, optax_empty(), PARAMS)
  for o, x, w in zip(jax.tree.leaves(out), jax.tree.leaves(g), jax.tree.leaves(PARAMS)):
    assert abs(float(jnp.vdot(o, w))) < 1e-5  # orthogonal to the weights
    np.testing.assert_allclose(jnp.linalg.norm(o), jnp.linalg.norm(x), rtol=1e-5)  # same norm
  off, _ = optim.orthogonal_grad(0.0).update(g, optax_empty(), PARAMS)
  for o, x in zip(jax.tree.leaves(off), jax.tree.leaves(g)):
    np.testing.assert_array_equal(o, x)


def optax_empty():
  import optax

  return optax.EmptyState()


def test_decay_towards_initial_weights():
  tx = optim.decayed_weights(0.5, to_init=True)  # static: the state holds the initial weights
  state = tx.init(PARAMS)
  moved = jax.tree.map(lambda p: p + 1.0, PARAMS)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  out, _ = tx.update(zeros, state, moved)
  for o in jax.tree.leaves(out):
    np.testing.assert_allclose(o, 0.5, rtol=1e-6)  # wd * (w - w0) = 0.5 * 1
  out, _ = optim.decayed_weights(0.5).update(zeros, optim.decayed_weights(0.5).init(PARAMS), moved)
  for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(moved)):
    np.testing.assert_allclose(o, 0.5 * w, rtol=1e-6)  # plain AdamW decay towards zero


def test_stablemax_values_and_gradients():
  z = jnp.array([[2.0, -1.0, 0.0, -3.5], [0.5, 0.25, -0.5, 4.0]])
  y = jnp.array([0, 3])
  s = np.where(np.asarray(z) >= 0, np.asarray(z) + 1, 1 / (1 - np.asarray(z)))
  np.testing.assert_allclose(losses.stablemax_s(z), s, rtol=1e-6)
  expected = -np.log(s[[0, 1], [0, 3]] / s.sum(1))
  np.testing.assert_allclose(losses.stablemax_cross_entropy(z, y), expected, rtol=1e-6)
  # d/dz_c = s'(z_c) / sum s - [c == y] s'(z_y) / s(z_y), with s' = 1 or 1 / (1 - z)^2
  ds = np.where(np.asarray(z) >= 0, 1.0, 1 / (1 - np.asarray(z)) ** 2)
  grad = ds / s.sum(1, keepdims=True)
  grad[[0, 1], [0, 3]] -= ds[[0, 1], [0, 3]] / s[[0, 1], [0, 3]]
  got = jax.grad(lambda z: losses.stablemax_cross_entropy(z, y).sum())(z)
  np.testing.assert_allclose(got, grad, rtol=1e-5, atol=1e-7)
  # method.loss names the registered loss a run trains with
  np.testing.assert_allclose(registry.LOSSES["stablemax"].fn(z, y), expected, rtol=1e-6)
  assert not np.allclose(registry.LOSSES["softmax"].fn(z, y), expected)


def test_mlp_model():
  cfg = default_config().model
  cfg.name, cfg.width = "mlp", 200
  model = make_model(cfg, 20, 7)
  tokens = jnp.array([[1, 7, 2, 8], [3, 7, 4, 8]])
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  assert params["Dense_0"]["kernel"].shape == (3 * 20, 200)
  assert logits_of(model, params, tokens).shape == (2, 7)


@pytest.mark.slow
def test_variants_side_by_side(tmp_path, tiny):
  names = tuple(config.VARIANTS)[:7]  # the methods; Power et al.'s interventions follow
  cfg = tiny(
    **{
      "sweep.variants": names,
      "sweep.train_fracs": (0.5,),
      "method.grokfast_window": 5,
      "steps": 20,
      "eval_float64": True,  # the numerical-stability setting: float64 losses, collapse
    }
  )
  workdir = sweep.run_sweep(cfg, tmp_path / "variants", progress=False)
  report.report(workdir)
  runs = json.loads((workdir / "runs.json").read_text())
  assert [r["variant"] for r in runs] == [n for n in names for _ in (0, 1)]
  assert len(names) == 7
  # One program per set of methods (and per loss): the baselines, which differ in
  # per-run values only, share the one that carries no method.
  programs = [[runs[k]["variant"] for k in p.runs] for p in plan.build(cfg).programs]
  assert sorted(sorted(set(p)) for p in programs) == [
    ["baseline", "baseline_lr_matched", "baseline_wd0"],
    ["grokfast_ema"],
    ["grokfast_ma"],
    ["orthograd"],
    ["stablemax"],
  ]
  assert (workdir / "figures" / "variants.png").stat().st_size > 10_000
  by_name = {r["variant"]: r for r in runs}
  assert by_name["baseline_lr_matched"]["lr"] == pytest.approx(3e-3)
  assert by_name["stablemax"]["weight_decay"] == by_name["orthograd"]["weight_decay"] == 0.0
  records = logs.read_metrics(workdir / "metrics.msgpack")
  final = records[-1]["train_loss"]
  assert all(0 <= c <= 1 for r in records for c in r["train_collapse"] + r["val_collapse"])
  assert len(set(np.round(final, 6))) == len(final)  # every variant trains differently
  # The baseline runs of the comparison equal the same runs trained alone (the
  # float64 losses agree with float32's to its precision).
  plain = sweep.run_sweep(
    tiny(**{"sweep.train_fracs": (0.5,), "steps": 20}), tmp_path / "plain", progress=False
  )
  for a, b in zip(records, logs.read_metrics(plain / "metrics.msgpack"), strict=True):
    np.testing.assert_allclose(a["val_loss"][:2], b["val_loss"], rtol=1e-4)


@pytest.mark.slow
def test_init_scale_and_norm_target(tmp_path, tiny):
  cfg = tiny(
    **{
      "sweep.init_scale": (1.0, 3.0),
      "sweep.train_fracs": (0.5,),
      "sweep.seeds": (0,),
      "steps": 10,
      "eval_every": 5,
    }
  )
  records = logs.read_metrics(
    sweep.run_sweep(cfg, tmp_path / "a", progress=False) / "metrics.msgpack"
  )
  np.testing.assert_allclose(
    records[0]["param_norm"][1], 3 * records[0]["param_norm"][0], rtol=1e-5
  )
  cfg = tiny(
    **{"method.norm_target": 20.0, "sweep.train_fracs": (0.5,), "steps": 10, "eval_every": 5}
  )
  records = logs.read_metrics(
    sweep.run_sweep(cfg, tmp_path / "b", progress=False) / "metrics.msgpack"
  )
  np.testing.assert_allclose(records[-1]["param_norm"], 20.0, rtol=1e-4)


def test_bad_variant_is_refused(tiny):
  from grokjax.errors import UserError

  with pytest.raises(UserError, match="sweep.variants='grokfast' is unknown; choose one of: "):
    plan.build(tiny(**{"sweep.variants": ("baseline", "grokfast")}))


def test_cosine_schedule_after_warmup():
  """openai/grok's --anneal_lr: warmup, then a cosine from lr to lr_floor x lr over
  decay_steps updates, then the floor."""
  warmup, decay, floor = 10, 100, 0.1
  values = {
    **{k.field: k.default for k in registry.OPTIMIZERS["adamw"].keys},
    "lr": 1.0,
    "weight_decay": 0.0,
    "eps": 1e-30,  # Adam's step on a constant gradient is then exactly 1 (times the schedule)
    "warmup_steps": warmup,
    "decay_steps": decay,
    "lr_floor": floor,
  }
  params = {"w": jnp.zeros(())}
  for schedule in ("constant", "cosine"):
    tx = registry.OPTIMIZERS["adamw"].make([], **{**values, "schedule": schedule})
    state, seen = tx.init(params), []
    for _ in range(warmup + decay + 20):
      update, state = tx.update({"w": jnp.ones(())}, state, params)
      seen.append(-float(update["w"]))
    t = np.arange(len(seen))
    expected = np.minimum(1.0, (t + 1) / warmup)
    if schedule == "cosine":
      frac = np.clip((t - warmup) / decay, 0, 1)
      expected = expected * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * frac)))
    np.testing.assert_allclose(seen, expected, rtol=1e-5)
  assert seen[-1] == pytest.approx(floor) and seen[warmup + decay // 2] == pytest.approx(0.55)


def test_eps_and_schedule_are_sweep_axes(tiny):
  cfg = tiny()
  cfg.sweep.seeds, cfg.sweep.train_fracs = (0,), (0.5,)
  cfg.sweep.eps = (1e-8, 1e-3)
  cfg.sweep.schedule = ("constant", "cosine")
  s = plan.build(cfg)
  assert [(r["eps"], r["schedule"]) for r in s.runs] == [
    (1e-8, "constant"),
    (1e-8, "cosine"),
    (1e-3, "constant"),
    (1e-3, "cosine"),
  ]
  assert len(s.programs) == 2  # the schedule is static: a program each; eps is per run
  for prog in s.programs:
    np.testing.assert_array_equal(plan.run_arrays(s, prog).hparams["eps"], np.float32([1e-8, 1e-3]))
  cfg.sweep.eps = (0.0,)
  with pytest.raises(config.UserError, match="eps"):
    plan.build(cfg)
