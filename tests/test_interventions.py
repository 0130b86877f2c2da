"""Power et al.'s Fig. 2 interventions (openai/grok's --dropout, --weight_noise,
--noise_factor): each changes training when on, is the identity when off (a program
without it), draws its noise from the run's own key (a run is the same alone or
batched), and dropout is off at evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import evaluated, initial_state, leaf_bytes, logits_of

from grokjax import logs, model, optim, plan, rundir, sweep, train
from grokjax.errors import UserError

TOKENS = jnp.array([[1, 7, 2, 8], [3, 7, 4, 8], [5, 7, 6, 8]])


@pytest.mark.parametrize("cls", [model.Transformer, model.OpenAIGrok])
def test_dropout_is_openai_grok_ffn_dropout_and_off_by_default(cls):
  net = cls(10, 7, num_layers=2, width=16, num_heads=2)
  params = jax.jit(net.init)(jax.random.key(0), TOKENS)["params"]
  apply = lambda **kw: net.apply({"params": params}, TOKENS, **kw)
  plain = apply()
  rngs = lambda seed: {"dropout": jax.random.key(seed)}
  # Rate 0 (traced, as a per-run value is) is the identity (to XLA's fusion of the
  # program: a program of runs at 0 leaves dropout out, see the sweep test below).
  zero = jax.jit(lambda r: apply(dropout=r, rngs=rngs(1)))(jnp.float32(0.0))
  np.testing.assert_allclose(zero, plain, rtol=1e-6, atol=1e-6)
  on = apply(dropout=jnp.float32(0.5), rngs=rngs(1))
  assert not np.allclose(on, plain)
  again = apply(dropout=jnp.float32(0.5), rngs=rngs(1))
  assert leaf_bytes(again) == leaf_bytes(on)  # the key decides
  assert not np.allclose(apply(dropout=jnp.float32(0.5), rngs=rngs(2)), on)


def test_dropout_zeroes_a_fraction_and_rescales_the_rest():
  x = jnp.ones((200, 500))

  class Drop(model.nn.Module):
    @model.nn.compact
    def __call__(self, x, rate):
      return model.dropout(self, x, rate)

  drop = jax.jit(lambda r: Drop().apply({}, x, r, rngs={"dropout": jax.random.key(0)}))
  assert np.asarray(drop(jnp.float32(0.0))).tobytes() == np.asarray(x).tobytes()
  out = np.asarray(drop(jnp.float32(0.3)))
  np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.7], rtol=1e-6)
  assert abs((out == 0).mean() - 0.3) < 0.01
  assert abs(out.mean() - 1.0) < 0.02  # E[dropout(x)] = x


def test_gaussian_noise_is_the_identity_at_zero_and_a_function_of_the_key():
  tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": -jnp.zeros(4)}}
  key = jax.random.key(3)
  assert leaf_bytes(optim.add_gaussian(tree, key, jnp.float32(0.0))) == leaf_bytes(tree)
  noisy = optim.add_gaussian(tree, key, 0.1)
  assert not np.allclose(noisy["a"], tree["a"])
  # Batched over keys (a sweep's runs), each run gets what it gets alone.
  keys = jax.random.split(jax.random.key(4), 3)
  batched = jax.vmap(lambda k: optim.add_gaussian(tree, k, 0.1))(keys)
  for i in range(3):
    alone = optim.add_gaussian(tree, keys[i], 0.1)
    assert leaf_bytes(jax.tree.map(lambda x, i=i: x[i], batched)) == leaf_bytes(alone)


def test_update_noise_is_openai_grok_noise_factor():
  """CustomAdamW: p -= lr / (1 - b1^t) * (exp_avg / denom + noise_factor * N(0, 1)): on
  optax's bias-corrected Adam direction, noise of std noise_factor / (1 - b1^t)."""
  updates = {"w": jnp.zeros((400, 500))}
  for step, want in ((0, 0.1 / (1 - 0.9)), (4, 0.1 / (1 - 0.9**5)), (999, 0.1)):
    tx = optim.update_noise(0.1, jax.random.key(step), step, b1=0.9)
    out, _ = tx.update(updates, tx.init(updates))
    assert np.std(out["w"]) == pytest.approx(want, rel=0.01)
    assert abs(np.mean(out["w"])) < 0.01 * want
  tx = optim.update_noise(jnp.float32(0.0), jax.random.key(0), 0, b1=0.9)
  direction = {"w": jax.random.normal(jax.random.key(1), (3, 4))}
  assert leaf_bytes(tx.update(direction, tx.init(direction))[0]) == leaf_bytes(direction)


def _program(tiny, **overrides):
  """The first program of a tiny sweep, one of its runs, and the table."""
  sw = plan.build(tiny(**{"sweep.train_fracs": (0.5,), "sweep.seeds": (0,), **overrides}))
  prog = sw.programs[-1]
  run = jax.tree.map(lambda x: jnp.asarray(x[0]), plan.run_arrays(sw, prog))
  return prog.static, run, jax.tree.map(jnp.asarray, sw.table)


def test_weight_noise_takes_the_gradient_at_noisy_weights_and_updates_the_clean_ones(tiny):
  static, run, table = _program(tiny, **{"method.weight_noise": 0.05})
  assert "weight_noise" in [m.name for m in static.methods]
  state = initial_state(static, table, run)
  got = jax.jit(lambda s: train.train_step(static, table, run, s))(state).params

  plain = static._replace(methods=tuple(m for m in static.methods if m.name != "weight_noise"))
  slots, weights = train.batch_indices(run, 0, static.batch)
  rows = run.rows[slots]

  def by_hand(at):
    def loss_fn(params):
      loss, _ = train.per_example(plain, params, table.inputs[rows], table.labels[rows])
      return (loss * weights).sum() / weights.sum()

    grads = jax.grad(loss_fn)(at)
    tx = train.optimizer(plain, run.hparams, jnp.int32(0), run.seed)
    updates, _ = tx.update(grads, state.opt_state, state.params)  # decay: the clean weights
    return optax.apply_updates(state.params, updates)

  key = train.method_key(run.seed, 0, "weight_noise")
  noise = jax.jit(optim.gaussian_like)(key, state.params)
  noisy = jax.jit(lambda p, n: jax.tree.map(lambda p, n: p + 0.05 * n, p, n))(state.params, noise)
  want = jax.jit(by_hand)(noisy)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  clean = jax.jit(by_hand)(state.params)  # the gradient at the clean weights is another step
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(clean)))


def test_evaluation_is_deterministic_under_dropout(tiny):
  static, run, table = _program(tiny, **{"model.dropout": 0.5})
  assert "dropout" in [m.name for m in static.methods]
  params = initial_state(static, table, run).params
  got = evaluated(static, table, run, params)
  logits = logits_of(static.model, params, table.inputs[run.rows])  # no dropout
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, table.labels[run.rows])
  val = np.asarray(run.valid & ~run.train_mask)
  np.testing.assert_allclose(got["val_loss"], np.asarray(loss)[val].mean(), rtol=1e-5)
  forward = train._forward(static, run, jnp.int32(0))  # the training forward drops units
  dropped = static.model.apply({"params": params}, table.inputs[run.rows], **forward)
  assert not np.allclose(dropped, logits)


def test_interventions_are_sweep_axes_one_program_for_their_nonzero_values(tiny):
  for axis, values in (
    ("dropout", (0.0, 0.1, 0.2)),
    ("weight_noise", (0.0, 0.01, 0.02)),
    ("update_noise", (0.0, 0.01, 0.02)),
  ):
    sw = plan.build(tiny(**{f"sweep.{axis}": values, "sweep.train_fracs": (0.5,)}))
    programs = [
      ([m.name for m in p.static.methods], [sw.runs[k][axis] for k in p.runs]) for p in sw.programs
    ]
    assert len(programs) == 2, programs
    (off_methods, off), (on_methods, on) = programs
    assert axis not in off_methods and set(off) == {0.0}  # the baseline: today's program
    assert axis in on_methods and sorted(set(on)) == list(values[1:])


def test_dropout_on_a_model_without_it_is_a_user_error(tiny):
  """Refused while the sweep is built (before a run directory is written), and by the
  train step itself for a program made by hand."""
  cfg = tiny(**{"model.dropout": 0.1, "model.name": "mlp"})
  with pytest.raises(UserError, match="takes no 'dropout'"):
    plan.build(cfg)
  static, run, table = _program(tiny, **{"model.dropout": 0.1})
  static = static._replace(model=model.make_model(dict(cfg.model), table.vocab_size, table.n))
  state = jax.eval_shape(lambda: train.init_state(static, table, run))
  with pytest.raises(UserError, match="takes no 'dropout'"):
    jax.eval_shape(lambda s: train.train_step(static, table, run, s), state)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  from conftest import tiny_config

  cfg = tiny_config(**{"sweep.train_fracs": (0.5,), "steps": 30, "eval_every": 15})
  return sweep.run_sweep(cfg, tmp_path_factory.mktemp("i") / "baseline", progress=False)


def _trained(workdir) -> list[tuple[dict, list[dict]]]:
  """(run fields, its metrics at every evaluation) of each run of a run directory; the
  metrics hold the weight norm of every module, so equal metrics are equal weights."""
  records = logs.read_metrics(workdir / "metrics.msgpack")
  runs = rundir.load(workdir).runs
  return [
    (run, [{m: v if m == "step" else v[k] for m, v in r.items()} for r in records])
    for k, run in enumerate(runs)
  ]


@pytest.mark.slow
@pytest.mark.parametrize(
  "path,value",
  [("model.dropout", 0.2), ("method.weight_noise", 0.02), ("method.update_noise", 0.05)],
)
def test_on_changes_training_off_is_the_baseline_and_runs_are_invariant(
  path, value, baseline, tiny, tmp_path
):
  """A sweep of {0, value / 2, value} x seeds {0, 1}: the runs at 0 are the baseline's,
  bit for bit; the others train differently; seed 1 at ``value`` is the same run, bit for
  bit, trained alone."""
  axis = path.rsplit(".", 1)[1]
  common = {"sweep.train_fracs": (0.5,), "steps": 30, "eval_every": 15}
  mixed = sweep.run_sweep(
    tiny(**common, **{f"sweep.{axis}": (0.0, value / 2, value)}), tmp_path / "mixed", progress=False
  )
  alone = sweep.run_sweep(
    tiny(**common, **{path: value, "sweep.seeds": (1,)}), tmp_path / "alone", progress=False
  )
  base = {run["seed"]: metrics for run, metrics in _trained(baseline)}
  ((_, alone_metrics),) = _trained(alone)
  runs = _trained(mixed)
  assert sorted((r["seed"], r[axis]) for r, _ in runs) == sorted(
    (s, v) for s in (0, 1) for v in (0.0, value / 2, value)
  )
  assert len(alone_metrics) == 3 and "param_norm/unembed" in alone_metrics[-1]
  for run, metrics in runs:
    if run[axis] == 0:
      assert metrics == base[run["seed"]]  # bit for bit: floats compared with ==
      continue
    assert metrics[-1]["train_loss"] != base[run["seed"]][-1]["train_loss"]
    if run["seed"] == 1 and run[axis] == value:
      assert metrics == alone_metrics
