import jax
import jax.numpy as jnp
import numpy as np
import optax

from grokjax import optim, sweep, train


def _setup(cfg):
  s = sweep.build(cfg)
  table = train.Table(jnp.asarray(s.table.inputs), jnp.asarray(s.table.labels))
  return s, s.model, table


def _subset(runs: train.Run, idx):
  return jax.tree.map(lambda x: x[np.asarray(idx)], runs)


def _initial_run(s, table, k):
  """Run k of sweep s and its initial parameters."""
  runs = sweep.run_arrays(s)
  init, _ = sweep.sweep_fns(s)
  return _subset(runs, k), jax.tree.map(lambda x: x[k], init(table, runs).params)


def test_run_of_a_batched_sweep_equals_the_run_alone(tiny):
  # Different fractions (so different batch sizes), seeds and learning rates.
  cfg = tiny(**{"sweep.lr": (1e-3, 3e-3)})
  s, model, table = _setup(cfg)
  runs = sweep.run_arrays(s)
  assert len(set(s.batch_sizes.tolist())) > 1
  init, chunk = sweep.sweep_fns(s)
  states, metrics = chunk(table, runs, init(table, runs), 25)
  for i in (0, 3, len(s.runs) - 1):
    alone = _subset(runs, [i])
    state_i, metrics_i = chunk(table, alone, init(table, alone), 25)
    for a, b in zip(jax.tree.leaves(state_i.params), jax.tree.leaves(states.params)):
      np.testing.assert_allclose(a[0], b[i], rtol=1e-4, atol=1e-4)
    for name in train.METRICS:
      np.testing.assert_allclose(metrics_i[name][0], metrics[name][i], rtol=1e-4, atol=1e-5)


def test_runs_in_groups_equal_runs_all_vmapped(tiny):
  # 4 runs in groups of 3 (lax.map over one group of 3, then the remainder of 1).
  s, _, table = _setup(tiny(vmap_group=3))
  runs = sweep.run_arrays(s)
  assert sweep.vmap_group(s.cfg, s.batch) == 3
  init, grouped = sweep.sweep_fns(s)
  _, together = train.make_sweep_fns(
    train.Static(s.model, s.cfg.optim, s.batch, s.cfg.eval_batch), None, None
  )
  a, metrics_a = grouped(table, runs, init(table, runs), 25)
  b, metrics_b = together(table, runs, init(table, runs), 25)
  for x, y in zip(jax.tree.leaves((a, metrics_a)), jax.tree.leaves((b, metrics_b)), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_chunks_compose(tiny):
  # 10 + 15 steps equal 25 steps: a chunk's length changes nothing but the eval.
  s, model, table = _setup(tiny())
  runs = sweep.run_arrays(s)
  init, chunk = sweep.sweep_fns(s)
  a, _ = chunk(table, runs, init(table, runs), 25)
  b, _ = chunk(table, runs, init(table, runs), 10)
  b, _ = chunk(table, runs, b, 15)
  assert int(b.step[0]) == 25
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_batches_are_epochs_over_the_train_set(tiny):
  s, _, _ = _setup(tiny())
  run = _subset(sweep.run_arrays(s), 0)
  bs = int(run.batch_size)
  n_train = int(run.train_mask.sum())
  steps_per_epoch = n_train // bs
  batch = s.batch + 3  # a static batch larger than this run's
  seen = []
  for step in range(steps_per_epoch):
    rows, weights = train.batch_indices(run, step, batch)
    assert float(weights.sum()) == bs and (weights[:bs] == 1).all()
    seen.extend(np.asarray(rows[:bs]).tolist())
  assert len(set(seen)) == len(seen) == steps_per_epoch * bs  # no repeats in an epoch
  assert np.asarray(run.train_mask)[seen].all()  # only training rows
  next_epoch, _ = train.batch_indices(run, steps_per_epoch, batch)
  assert np.asarray(next_epoch[:bs]).tolist() != seen[:bs]  # reshuffled


def test_evaluation_matches_a_direct_computation(tiny):
  s, model, table = _setup(tiny())
  run, params = _initial_run(s, table, 1)
  m = train.evaluate(model, 16, table, run, params)  # 49 rows in blocks of 16: padded
  logits = model.apply({"params": params}, table.inputs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, table.labels)
  mask = np.asarray(run.train_mask)
  np.testing.assert_allclose(m["train_loss"], loss[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["val_loss"], loss[~mask].mean(), rtol=1e-5)
  acc = np.asarray(logits.argmax(-1) == table.labels)
  np.testing.assert_allclose(m["val_acc"], acc[~mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(m["param_norm"], optax.tree.norm(params), rtol=1e-6)


def test_float64_evaluation_sees_the_loss_that_float32_rounds_to_zero(tiny):
  s, model, table = _setup(tiny())
  run, params = _initial_run(s, table, 1)
  mask = np.asarray(run.train_mask)
  labels = np.asarray(table.labels)
  # Scale the logits (the unembedding) so the train example the model is surest of
  # has a margin of 25: exp(-25) ~ 1e-11 vanishes next to 1 in float32, not in float64.
  logits = np.asarray(model.apply({"params": params}, table.inputs))
  top2 = np.sort(logits, -1)[:, -2:]
  right = mask & (logits.argmax(-1) == labels)
  assert right.any()
  scale = 25 / (top2[:, 1] - top2[:, 0])[right].max()
  params["unembed"] = jax.tree.map(lambda w: scale * w, params["unembed"])

  with jax.enable_x64(True):
    m = train.evaluate(model, 16, table, run, params, float64=True)
  logits32 = model.apply({"params": params}, table.inputs)
  loss32 = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits32, labels))
  with jax.enable_x64(True):
    logits = model.apply(
      {"params": jax.tree.map(lambda w: w.astype(np.float64), params)}, table.inputs
    )
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
  assert "train_collapse" not in train.evaluate(model, 16, table, run, params)


def test_warmup_and_per_run_hyperparameters(tiny):
  cfg = tiny().optim
  np.testing.assert_allclose([optim.warmup(10)(t) for t in (0, 4, 9, 50)], [0.1, 0.5, 1, 1])
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.zeros(3)}  # only weight decay moves the weights
  off = dict.fromkeys(optim.INJECTED, 0.0)
  tx = optim.make_optimizer(cfg, dict(off, lr=0.5, weight_decay=0.1))
  state = tx.init(params)
  updates, _ = optim.make_optimizer(cfg, off).update(grads, state, params)
  # first update: warmup 1/10 of lr 0.5 times wd 0.1 times w = 1
  np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * 0.1 * np.ones(3), rtol=1e-6)


def test_adam_with_l2_decays_through_adam(tiny):
  # decoupled=False (torch.optim.Adam's weight_decay): wd * w joins the gradient, and
  # Adam normalises it, so the first step is ~lr regardless of how small wd * w is.
  cfg = tiny(**{"optim.decoupled": False}).optim
  off = dict.fromkeys(optim.INJECTED, 0.0)
  tx = optim.make_optimizer(cfg, dict(off, lr=0.5, weight_decay=0.1))
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * np.ones(3), rtol=1e-4)  # warmup 1/10
