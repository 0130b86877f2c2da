import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import evaluated, logits_of

from grokjax import config, devices, layout, optim, plan, registry, train


def _setup(cfg):
  """The sweep, its one program, and the table as a notebook passes it."""
  s = plan.build(cfg)
  assert len(s.programs) == 1
  return s, s.programs[0], s.table


def _subset(runs: train.Run, idx):
  return jax.tree.map(lambda x: x[np.asarray(idx)], runs)


def _initial_run(s, prog, table, k):
  """Run k of sweep s and its initial parameters."""
  runs = plan.run_arrays(s, prog)
  init, _ = devices.sweep_fns(s)[0]
  return _subset(runs, k), jax.tree.map(lambda x: x[k], init(table, runs).params)


@pytest.mark.slow
def test_run_of_a_batched_sweep_equals_the_run_alone(tiny):
  # Different fractions (so different batch sizes), seeds and learning rates; one run
  # per vmap group (CPU's default): bit for bit (tests/test_invariance.py: more).
  cfg = tiny(**{"sweep.lr": (1e-3, 3e-3)})
  s, prog, table = _setup(cfg)
  runs = plan.run_arrays(s, prog)
  assert len(set(s.batch_sizes.tolist())) > 1
  init, chunk = devices.sweep_fns(s)[0]
  states, metrics = chunk(table, runs, init(table, runs), 25)
  for i in (0, 3, len(s.runs) - 1):
    alone = _subset(runs, [i])
    state_i, metrics_i = chunk(table, alone, init(table, alone), 25)
    for a, b in zip(jax.tree.leaves(state_i.params), jax.tree.leaves(states.params)):
      np.testing.assert_array_equal(a[0], b[i])
    for name in train.METRICS:
      np.testing.assert_array_equal(metrics_i[name][0], metrics[name][i])


@pytest.mark.slow
def test_runs_in_groups_equal_runs_all_vmapped(tiny):
  # 4 runs in groups of 3 (lax.map over one group of 3, then the remainder of 1).
  s, prog, table = _setup(tiny(vmap_group=3))
  runs = plan.run_arrays(s, prog)
  assert layout.vmap_group(s.cfg) == 3
  init, grouped = devices.sweep_fns(s)[0]
  _, together = layout.make_sweep_fns(prog.static, None, None)
  a, metrics_a = grouped(table, runs, init(table, runs), 25)
  b, metrics_b = together(table, runs, init(table, runs), 25)
  for x, y in zip(jax.tree.leaves((a, metrics_a)), jax.tree.leaves((b, metrics_b)), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_chunks_compose(tiny):
  # 10 + 15 steps equal 25 steps: a chunk's length changes nothing but the eval.
  s, prog, table = _setup(tiny())
  runs = plan.run_arrays(s, prog)
  init, chunk = devices.sweep_fns(s)[0]
  a, _ = chunk(table, runs, init(table, runs), 25)
  b, _ = chunk(table, runs, init(table, runs), 10)
  b, _ = chunk(table, runs, b, 15)
  assert int(b.step[0]) == 25
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_batches_are_epochs_over_the_train_set(tiny):
  s, prog, _ = _setup(tiny())
  run = _subset(plan.run_arrays(s, prog), 0)
  bs = int(run.batch_size)
  n_train = int(run.train_mask.sum())
  steps_per_epoch = n_train // bs
  batch = prog.static.batch + 3  # a static batch larger than this run's
  seen = []
  for step in range(steps_per_epoch):
    rows, weights = train.batch_indices(run, step, batch)
    assert float(weights.sum()) == bs and (weights[:bs] == 1).all()
    seen.extend(np.asarray(rows[:bs]).tolist())
  assert len(set(seen)) == len(seen) == steps_per_epoch * bs  # no repeats in an epoch
  assert np.asarray(run.train_mask)[seen].all()  # only training rows
  next_epoch, _ = train.batch_indices(run, steps_per_epoch, batch)
  assert np.asarray(next_epoch[:bs]).tolist() != seen[:bs]  # reshuffled


@pytest.mark.slow
def test_the_chunk_carries_each_runs_epoch_order(tiny):
  # Epochs of 3 and 4 steps in one vmap group, 11 steps from step 2: the chunk, which
  # draws an epoch's order only when a run enters a new epoch, takes the batches of
  # batch_indices (which draws it at every step), so the same updates.
  s, prog, table = _setup(
    tiny(batch_size=8, **{"sweep.seeds": (0,), "sweep.train_fracs": (0.5, 0.8)})
  )
  runs = plan.run_arrays(s, prog)
  assert [s.steps_per_epoch(k) for k in range(2)] == [3, 4]
  init, chunk = layout.make_sweep_fns(prog.static, None, 2)
  states, _ = chunk(table, runs, init(table, runs), 2)
  step = jax.jit(jax.vmap(lambda r, st: train.train_step(prog.static, table, r, st)))
  want = states
  for _ in range(11):
    want = step(runs, want)
  got, _ = chunk(table, runs, states, 11)
  assert int(got.step[0]) == 13
  for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters(tiny):
  # compute_dtype=bfloat16: the model's matmuls in bfloat16, the parameters, the Adam
  # moments and the evaluation in float32 (step 0's metrics are float32's, exactly).
  s32, prog32, table = _setup(tiny())
  s16, prog16, _ = _setup(tiny(compute_dtype="bfloat16"))
  run, params = _initial_run(s16, prog16, table, 0)
  loss = lambda p: train.per_example(prog16.static, p, table.inputs, table.labels, "bfloat16")
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p)[0].mean()))(params)
  dots = [e.outvars[0].aval.dtype for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert dots and all(d == jnp.bfloat16 for d in dots)
  grads = jax.jit(jax.grad(lambda p: loss(p)[0].mean()))(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  got = {}
  for name, s, prog in (("f32", s32, prog32), ("bf16", s16, prog16)):
    runs = plan.run_arrays(s, prog)
    init, chunk = devices.sweep_fns(s)[0]
    states = init(table, runs)
    _, at0 = chunk(table, runs, states, 0)
    states, at20 = chunk(table, runs, init(table, runs), 20)
    assert {x.dtype for x in jax.tree.leaves(states)} <= {
      jnp.dtype(jnp.float32),
      jnp.dtype(jnp.int32),
    }
    got[name] = (at0, at20)
  for name in train.METRICS:
    np.testing.assert_array_equal(got["f32"][0][name], got["bf16"][0][name])
  # 20 steps later: the same training, to bfloat16's 3 significant digits and change
  np.testing.assert_allclose(got["bf16"][1]["train_loss"], got["f32"][1]["train_loss"], rtol=0.1)


@pytest.mark.slow
def test_evaluation_matches_a_direct_computation(tiny):
  s, prog, table = _setup(tiny())
  model, static = prog.static.model, prog.static._replace(eval_batch=16)
  run, params = _initial_run(s, prog, table, 1)
  m = evaluated(static, table, run, params)  # 49 rows in blocks of 16: padded
  logits = logits_of(model, params, table.inputs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, table.labels)
  mask = np.asarray(run.train_mask)
  np.testing.assert_allclose(m["train_loss"], loss[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["val_loss"], loss[~mask].mean(), rtol=1e-5)
  acc = np.asarray(logits.argmax(-1) == table.labels)
  np.testing.assert_allclose(m["val_acc"], acc[~mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(m["param_norm"], optax.tree.norm(params), rtol=1e-6)


@pytest.mark.slow
def test_float64_evaluation_sees_the_loss_that_float32_rounds_to_zero(tiny):
  s, prog, table = _setup(tiny())
  model, static = prog.static.model, prog.static._replace(eval_batch=16)
  run, params = _initial_run(s, prog, table, 1)
  mask = np.asarray(run.train_mask)
  labels = np.asarray(table.labels)
  # Scale the logits (the unembedding) so the train example the model is surest of
  # has a margin of 25: exp(-25) ~ 1e-11 vanishes next to 1 in float32, not in float64.
  logits = np.asarray(logits_of(model, params, table.inputs))
  top2 = np.sort(logits, -1)[:, -2:]
  right = mask & (logits.argmax(-1) == labels)
  assert right.any()
  scale = 25 / (top2[:, 1] - top2[:, 0])[right].max()
  params["unembed"] = jax.tree.map(lambda w: scale * w, params["unembed"])

  with jax.enable_x64(True):
    m = evaluated(static, table, run, params, float64=True)
  logits32 = logits_of(model, params, table.inputs)
  loss32 = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits32, labels))
  with jax.enable_x64(True):
    logits = logits_of(model, jax.tree.map(lambda w: w.astype(np.float64), params), table.inputs)
    logits = np.asarray(logits)
  assert logits.dtype == np.float64
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  loss64 = -np.take_along_axis(log_p, labels[:, None], 1)[:, 0]
  collapsed = loss32 == 0
  assert (loss64[collapsed & mask] > 0).any()  # float32 rounded them to 0
  np.testing.assert_allclose(m["train_loss"], loss64[mask].mean(), rtol=1e-9)
  np.testing.assert_allclose(m["val_loss"], loss64[~mask].mean(), rtol=1e-9)
  np.testing.assert_allclose(m["train_collapse"], collapsed[mask].mean(), rtol=1e-9)
  np.testing.assert_allclose(m["val_collapse"], collapsed[~mask].mean(), rtol=1e-9)
  assert "train_collapse" not in evaluated(static, table, run, params)


def _adamw(cfg, lr, weight_decay):
  """AdamW as a run of ``cfg`` gets it, with this lr and weight decay."""
  opt = registry.OPTIMIZERS["adamw"]
  values = {k.field: config._get(cfg, k.path) for k in opt.keys}
  return opt.make([], **{**values, "lr": lr, "weight_decay": weight_decay})


def test_warmup_and_per_run_hyperparameters(tiny):
  np.testing.assert_allclose([optim.warmup(10)(t) for t in (0, 4, 9, 50)], [0.1, 0.5, 1, 1])
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.zeros(3)}  # only weight decay moves the weights
  tx = _adamw(tiny(), 0.5, 0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  # first update: warmup 1/10 of lr 0.5 times wd 0.1 times w = 1
  np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * 0.1 * np.ones(3), rtol=1e-6)
  # the values are per run: vmapped over two runs' (lr, weight decay)
  lrs, wds = jnp.array([0.5, 0.2]), jnp.array([0.1, 0.0])
  both = jax.vmap(lambda lr, wd: _adamw(tiny(), lr, wd).update(grads, tx.init(params), params)[0])
  np.testing.assert_allclose(both(lrs, wds)["w"][:, 0], [-0.5 * 0.1 * 0.1, 0.0], rtol=1e-6)


def test_adam_with_l2_decays_through_adam(tiny):
  # decoupled=False (torch.optim.Adam's weight_decay): wd * w joins the gradient, and
  # Adam normalises it, so the first step is ~lr regardless of how small wd * w is.
  tx = _adamw(tiny(**{"optim.decoupled": False}), 0.5, 0.1)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * np.ones(3), rtol=1e-4)  # warmup 1/10
