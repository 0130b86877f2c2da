"""Pure training: state init, train step, full-table evaluation, chunked loops.

Everything here is written for ONE run and made batched with ``jax.vmap``: a sweep
is K runs sharing one table, each with its own parameters, optimizer state,
hyperparameters and train mask over the full table. A smaller train set is a
masked batch of the static size, so train fractions never cause a recompile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grokjax import registry
from grokjax.data import Table


class Run(NamedTuple):
  """Per-run constants (stacked on a leading run axis for a sweep).

  A run sees M rows of the (possibly multi-operation) table: ``rows`` are their
  table indices, ``valid`` marks the real ones (a run of an operation with a
  smaller table is padded), ``train_mask`` its training rows among them.
  """

  seed: jax.Array  # int32: model init and batch order
  rows: jax.Array  # int32 [M]: the table rows of the run's operation
  valid: jax.Array  # bool [M]: real rows (False: padding)
  train_mask: jax.Array  # bool [M]: training rows; valid & ~train_mask is validation
  batch_size: jax.Array  # int32: this run's batch, <= the static batch size
  hparams: dict  # field -> float32: the per-run values of the program's optimizer and methods


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array  # int32: updates taken


# Every evaluation also logs "param_norm/<module>": the L2 norm of each top-level module.
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "param_norm")


def keys(seed):
  """(init key, batch-order key) of a run, both derived from its seed."""
  key = jax.random.key(seed)
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


class Static(NamedTuple):
  """What every run of one program shares: the model, the optimizer, the methods
  some run of it uses, the loss, their static values, the shapes."""

  model: object  # a Flax module
  optimizer: registry.Optimizer
  methods: tuple  # registry.Method entries, in registration order
  values: dict  # field -> static value (the optimizer's, the methods', the model's)
  loss: Callable  # per-example loss (registry.Loss.fn)
  batch: int  # the static batch size
  eval_batch: int  # table rows per evaluation block
  eval_float64: bool = False  # evaluate the loss in float64 too (see ``evaluate``)


def _values(static: Static, entry, hparams: dict) -> dict:
  """An entry's keyword arguments: its per-run values from ``hparams``, the rest static."""
  return {k.field: hparams[k.field] if k.per_run else static.values[k.field] for k in entry.keys}


def optimizer(static: Static, hparams: dict, step=None) -> optax.GradientTransformation:
  """One run's optimizer: the methods' gradient filters inside the optimizer's chain.

  ``hparams`` (one run's per-run values, traced under ``vmap``) enter as closures,
  so building it again in every step is free. ``step`` (the update's index, shared by
  all runs) goes to the methods that ask for it: given unbatched under ``vmap``, a
  ring buffer's slot is one index and its write happens in place.
  """
  filters = []
  for m in static.methods:
    if m.gradient is not None:
      extra = dict(step=step) if m.uses_step else {}
      filters.append(m.gradient(**_values(static, m, hparams), **extra))
  return static.optimizer.make(filters, **_values(static, static.optimizer, hparams))


def init_state(static: Static, table: Table, run: Run) -> TrainState:
  """Fresh parameters (through the methods' ``init``) and optimizer state of one run."""
  init_key, _ = keys(run.seed)
  params = static.model.init(init_key, table.inputs[:1])["params"]
  for m in static.methods:
    if m.init is not None:
      params = m.init(params, **_values(static, m, run.hparams))
  tx = optimizer(static, run.hparams)
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def per_example(static: Static, params, inputs, labels):
  """The loss and correctness of the answer token, per example."""
  logits = static.model.apply({"params": params}, inputs)
  return static.loss(logits, labels), (logits.argmax(-1) == labels)


def batch_indices(run: Run, step, batch: int):
  """Positions (in ``run.rows``) and weights of one run's batch at ``step``.

  Epochs over the run's train set: each epoch is a fresh permutation (a function of
  the seed and the epoch, so nothing is stored), cut into ``run.batch_size`` rows a
  step, the remainder dropped. The static ``batch`` rows are weighted 1 for the
  first ``run.batch_size`` and 0 after.
  """
  n = run.train_mask.shape[0]
  n_train = run.train_mask.sum()
  steps_per_epoch = jnp.maximum(n_train // run.batch_size, 1)
  epoch, k = jnp.divmod(step, steps_per_epoch)
  _, order_key = keys(run.seed)
  noise = jax.random.uniform(jax.random.fold_in(order_key, epoch), (n,))
  order = jnp.argsort(jnp.where(run.train_mask, noise, 2.0))  # train rows first
  slots = jnp.arange(batch)
  rows = order[(k * run.batch_size + slots) % n]
  return rows, (slots < run.batch_size).astype(jnp.float32)


def train_step(static: Static, table: Table, run: Run, state: TrainState, step=None):
  """One update of one run on its next batch, then the methods' ``after_update``.

  ``step`` is ``state.step`` given unbatched (every run of a sweep is at the same
  step), which keeps per-step indexing a single index under ``vmap``.
  """
  table = jax.tree.map(jnp.asarray, table)  # a host (numpy) table works too
  step = state.step if step is None else step
  slots, weights = batch_indices(run, step, static.batch)
  rows = run.rows[slots]

  def loss_fn(params):
    loss, _ = per_example(static, params, table.inputs[rows], table.labels[rows])
    return (loss * weights).sum() / weights.sum()

  grads = jax.grad(loss_fn)(state.params)
  updates, opt_state = optimizer(static, run.hparams, step).update(
    grads, state.opt_state, state.params
  )
  params = optax.apply_updates(state.params, updates)
  for m in static.methods:
    if m.after_update is not None:
      params = m.after_update(params, **_values(static, m, run.hparams))
  return TrainState(params, opt_state, state.step + 1)


def evaluate(static: Static, table: Table, run: Run, params, float64=False) -> dict:
  """Loss and accuracy on the run's full train and val sets, and weight norms
  (all parameters, and per top-level module: embeddings, each block, unembedding).

  One forward pass over all the run's rows serves both sets; it runs in blocks of
  ``eval_batch`` rows to bound memory. With ``float64`` (trace it with
  ``jax.enable_x64(True)``) the losses come from a second forward pass in float64,
  and ``train_collapse``/``val_collapse`` are the fractions of examples whose
  float32 loss is exactly 0: Prieto et al.'s "softmax collapse", where the correct
  class's probability rounds to 1 and the example stops giving gradient.
  """
  table = jax.tree.map(jnp.asarray, table)  # a host (numpy) table works too
  n = run.rows.shape[0]
  blocks = -(-n // static.eval_batch)
  size = -(-n // blocks)  # equal blocks of at most eval_batch rows, padding < blocks
  rows = jnp.pad(run.rows, (0, blocks * size - n)).reshape(blocks, size)

  def block(r):
    inputs, labels = table.inputs[r], table.labels[r]
    loss32, correct = per_example(static, params, inputs, labels)
    if not float64:
      return loss32, correct, loss32
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    return per_example(static, params64, inputs, labels)[0], correct, loss32

  loss, correct, loss32 = (x.reshape(-1)[:n] for x in jax.lax.map(block, rows))

  def mean(x, mask):
    return jnp.where(mask, x, 0).sum() / jnp.maximum(mask.sum(), 1)

  train, val = run.train_mask, run.valid & ~run.train_mask
  collapse = dict(train_collapse=mean(loss32 == 0, train), val_collapse=mean(loss32 == 0, val))
  return dict(
    train_loss=mean(loss, train),
    train_acc=mean(correct, train),
    val_loss=mean(loss, val),
    val_acc=mean(correct, val),
    param_norm=optax.tree.norm(params),
    **{f"param_norm/{name}": optax.tree.norm(sub) for name, sub in params.items()},
    **(collapse if float64 else {}),
  )


def make_chunk_fn(static: Static):
  """``chunk(table, run, state, n_steps, start) -> (state, metrics)`` for ONE run.

  Takes ``n_steps`` updates (a traced count: any chunk length, one compilation)
  and then evaluates (unless ``static.eval_float64``: ``make_sweep_fns`` then
  evaluates in a program of its own); ``start`` is the state's step, shared by all
  runs. Vmap it over runs; see ``make_sweep_fns``.
  """

  def chunk(table, run, state, n_steps, start):
    step = lambda i, s: train_step(static, table, run, s, start + i)
    state = jax.lax.fori_loop(0, n_steps, step, state)
    if static.eval_float64:
      return state, {}
    return state, evaluate(static, table, run, state.params)

  return chunk


def make_sweep_fns(static: Static, precision=None, group=None):
  """Jitted (init, chunk) over a leading run axis.

  ``init(table, runs) -> states``; ``chunk(table, runs, states, n_steps) ->
  (states, metrics)`` with each metric a [K] array. ``states`` is donated.
  ``precision`` ("high", "highest", or None for JAX's default, which may use TF32
  on recent NVIDIA GPUs) is the float32 matmul precision the chunk compiles with.
  ``group`` (None: all runs) is how many runs are vmapped together; groups take
  their chunk one after another (``lax.map``), which keeps a CPU's caches warm.
  With ``static.eval_float64`` the evaluation is a second program, traced and run
  with ``jax_enable_x64`` on: 64-bit types exist there and nowhere else.
  """
  init = jax.jit(jax.vmap(lambda t, r: init_state(static, t, r), (None, 0)))
  one = make_chunk_fn(static)

  def batched(table, runs, states, n_steps, start):
    each = lambda rs: one(table, *rs, n_steps, start)
    return jax.lax.map(each, (runs, states), batch_size=group or 0)  # 0: one vmap of all

  @functools.partial(jax.jit, donate_argnums=2)
  def chunk(table, runs, states, n_steps):
    with jax.default_matmul_precision(precision):
      return batched(table, runs, states, n_steps, states.step[0])  # runs move in lockstep

  if not static.eval_float64:
    return init, chunk

  def eval_one(table, run, params):
    with jax.default_matmul_precision(precision):
      return evaluate(static, table, run, params, float64=True)

  eval64 = jax.jit(jax.vmap(eval_one, (None, 0, 0)))

  def chunk_then_eval64(table, runs, states, n_steps):
    states, _ = chunk(table, runs, states, n_steps)
    with jax.enable_x64(True):
      return states, eval64(table, runs, states.params)

  return init, chunk_then_eval64
