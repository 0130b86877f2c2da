"""Pure training: state init, train step, full-table evaluation, chunked loops.

Everything here is written for ONE run and made batched with ``jax.vmap``: a sweep
is K runs sharing one table, each with its own parameters, optimizer state,
hyperparameters and train mask over the full table. A smaller train set is a
masked batch of the static size, so train fractions never cause a recompile.

``make_group_fns`` vmaps them over one group of runs; how the runs of a sweep map
onto groups and devices is grokjax.layout's.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from grokjax import registry
from grokjax.data import Table
from grokjax.errors import UserError, moved


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


def method_key(seed, step, name: str):
  """The key of method ``name`` in a run's update ``step``: a function of the run's
  seed, the step and the name alone (not of the program's other methods or runs), so
  a run draws the same dropout masks and noise alone or batched, resumed or not."""
  steps = jax.random.fold_in(jax.random.key(seed), 2)  # 0, 1: ``keys``
  return jax.random.fold_in(jax.random.fold_in(steps, step), zlib.crc32(name.encode()) >> 1)


class Static(NamedTuple):
  """What every run of one program shares: the model, the optimizer, the methods
  some run of it uses, the loss, their static values, the shapes."""

  model: object  # a Flax module
  optimizer: registry.Optimizer
  methods: tuple  # registry.Method entries, in registration order
  values: dict  # field -> static value (the optimizer's, the methods', the model's)
  loss: registry.Loss  # the per-example loss and its keys
  batch: int  # the static batch size
  eval_batch: int  # table rows per evaluation block
  eval_float64: bool = False  # evaluate the loss in float64 too (see ``evaluate``)
  compute_dtype: str = "float32"  # the training forward/backward's dtype (``per_example``)


def _values(static: Static, entry, hparams: dict) -> dict:
  """An entry's keyword arguments: its per-run values from ``hparams``, the rest static."""
  return {k.field: hparams[k.field] if k.per_run else static.values[k.field] for k in entry.keys}


def optimizer(static: Static, hparams: dict, step=None, seed=None) -> optax.GradientTransformation:
  """One run's optimizer: the methods' gradient filters inside the optimizer's chain
  (and their ``direction`` transformations inside it, as ``directions=``).

  ``hparams`` (one run's per-run values, traced under ``vmap``) enter as closures,
  so building it again in every step is free. ``step`` (the update's index, shared by
  all runs) goes to the methods that ask for it: given unbatched under ``vmap``, a
  ring buffer's slot is one index and its write happens in place. ``seed`` (the
  run's) and ``step`` make the ``key=`` of the methods with ``uses_key``.
  """
  filters, directions = [], []
  for m in static.methods:
    extra = dict(step=step) if m.uses_step else {}
    if m.uses_key:
      extra["key"] = None if seed is None else method_key(seed, step, m.name)
    if m.gradient is not None:
      filters.append(m.gradient(**_values(static, m, hparams), **extra))
    if m.direction is not None:
      directions.append(m.direction(**_values(static, m, hparams), **extra))
  values = _values(static, static.optimizer, hparams)
  if directions:
    if "directions" not in inspect.signature(static.optimizer.make).parameters:
      users = ", ".join(m.name for m in static.methods if m.direction is not None)
      raise UserError(
        f"optimizer {static.optimizer.name!r} takes no step-direction transformations, "
        f"which {users} needs; use optim.name=adamw"
      )
    values["directions"] = directions
  return static.optimizer.make(filters, **values)


def init_state(static: Static, table: Table, run: Run) -> TrainState:
  """Fresh parameters (through the methods' ``init``) and optimizer state of one run."""
  init_key, _ = keys(run.seed)
  params = static.model.init(init_key, table.inputs[:1])["params"]
  for m in static.methods:
    if m.init is not None:
      params = m.init(params, **_values(static, m, run.hparams))
  tx = optimizer(static, run.hparams)
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def per_example(
  static: Static, params, inputs, labels, dtype: str = "float32", forward=None, hparams=None
):
  """The loss and correctness of the answer token, per example.

  ``dtype`` ("bfloat16": ``config.compute_dtype``) is what the model computes in: the
  float parameters are cast to it before ``model.apply``, so Flax's layers do their
  matmuls and activations in it, while the parameters (and the gradient, through the
  cast) stay float32; the logits come back to float32 for the loss. ``forward``:
  keyword arguments of ``model.apply`` (the methods' ``forward``: training only);
  ``hparams``: the run's per-run values, for the loss's per-run keys.
  """
  low = dtype != "float32"
  if low:
    cast = lambda p: p.astype(COMPUTE_DTYPES[dtype]) if jnp.issubdtype(p.dtype, jnp.floating) else p
    params = jax.tree.map(cast, params)
  logits = static.model.apply({"params": params}, inputs, **(forward or {}))
  if low:
    logits = logits.astype(jnp.float32)
  loss = static.loss.fn(logits, labels, **_values(static, static.loss, hparams or {}))
  return loss, (logits.argmax(-1) == labels)


def steps_per_epoch(run: Run):
  """Updates per pass over the run's train set: N_train // batch size (at least 1)."""
  return jnp.maximum(run.train_mask.sum() // run.batch_size, 1)


def epoch_order(run: Run, epoch):
  """The run's row positions (in ``run.rows``) in the order of ``epoch``: its train
  rows first, in a random order that is a function of the seed and the epoch."""
  _, order_key = keys(run.seed)
  noise = jax.random.uniform(jax.random.fold_in(order_key, epoch), run.train_mask.shape)
  return jnp.argsort(jnp.where(run.train_mask, noise, 2.0))


def batch_indices(run: Run, step, batch: int, order=None):
  """Positions (in ``run.rows``) and weights of one run's batch at ``step``.

  Epochs over the run's train set: each epoch is a fresh permutation (a function of
  the seed and the epoch, so nothing is stored), cut into ``run.batch_size`` rows a
  step, the remainder dropped. The static ``batch`` rows are weighted 1 for the
  first ``run.batch_size`` and 0 after. ``order``: ``epoch_order`` of the step's
  epoch, if the caller has it (the chunk carries it from one epoch to the next).
  """
  n = run.train_mask.shape[0]
  epoch, k = jnp.divmod(step, steps_per_epoch(run))
  order = epoch_order(run, epoch) if order is None else order
  slots = jnp.arange(batch)
  rows = order[(k * run.batch_size + slots) % n]
  return rows, (slots < run.batch_size).astype(jnp.float32)


def _forward(static: Static, run: Run, step) -> dict | None:
  """The keyword arguments of the training forward pass from the methods' ``forward``
  hooks (their ``rngs`` merged), checked against the model's ``__call__``; None if
  no method of the program has one."""
  hooked = [m for m in static.methods if m.forward is not None]
  if not hooked:
    return None
  kwargs = {}
  for m in hooked:
    out = m.forward(method_key(run.seed, step, m.name), **_values(static, m, run.hparams))
    kwargs.update({k: v for k, v in out.items() if k != "rngs"})
    kwargs["rngs"] = {**kwargs.get("rngs", {}), **out.get("rngs", {})}
  takes = inspect.signature(type(static.model).__call__).parameters
  for name in kwargs.keys() - {"rngs"}:
    if name not in takes:
      users = ", ".join(m.name for m in hooked)
      raise UserError(
        f"model {type(static.model).__name__} takes no {name!r}, which {users} passes it; "
        "choose a model that does (transformer and openai_grok take dropout), or turn it off"
      )
  return kwargs


def check_forward(static: Static) -> None:
  """The UserError of ``_forward`` (a method passing the model an argument it does not
  take), raised while the sweep is built, before anything is traced or written."""
  hparams = {k.field: 0.0 for m in static.methods for k in m.keys if k.per_run}
  _forward(static, Run(0, None, None, None, None, hparams), 0)


def train_step(static: Static, table: Table, run: Run, state: TrainState, step=None, order=None):
  """One update of one run on its next batch, then the methods' ``after_update``.

  ``step`` is ``state.step`` given unbatched (every run of a sweep is at the same
  step), which keeps per-step indexing a single index under ``vmap``; ``order`` is
  the step's ``epoch_order`` (computed here if not given).
  """
  table = jax.tree.map(jnp.asarray, table)  # a host (numpy) table works too
  step = state.step if step is None else step
  slots, weights = batch_indices(run, step, static.batch, order)
  rows = run.rows[slots]
  forward = _forward(static, run, step)

  def loss_fn(params):
    inputs, labels = table.inputs[rows], table.labels[rows]
    loss, _ = per_example(
      static, params, inputs, labels, static.compute_dtype, forward, run.hparams
    )
    return (loss * weights).sum() / weights.sum()

  at = state.params  # the parameters the gradient is taken at: perturbed by the methods
  for m in static.methods:
    if m.perturb is not None:
      at = m.perturb(at, method_key(run.seed, step, m.name), **_values(static, m, run.hparams))
  grads = jax.grad(loss_fn)(at)
  updates, opt_state = optimizer(static, run.hparams, step, run.seed).update(
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
    loss32, correct = per_example(static, params, inputs, labels, hparams=run.hparams)
    if not float64:
      return loss32, correct, loss32
    params64 = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    loss64 = per_example(static, params64, inputs, labels, hparams=run.hparams)[0]
    return loss64, correct, loss32

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


class GroupFns(NamedTuple):
  """The pure functions of one GROUP of runs (every argument's leading axis is the
  group's): ``grokjax.layout.make_sweep_fns`` maps them over the groups of a sweep's run axis."""

  init: Callable  # (table, runs) -> states
  chunk: Callable  # (table, runs, states, (n_steps, start)) -> (states, metrics)
  eval64: Callable  # (table, runs, params) -> metrics, with float64 losses


def make_group_fns(static: Static) -> GroupFns:
  """Init, chunk and float64 evaluation of a group of runs (``vmap`` of one run's).

  The chunk takes ``n_steps`` updates (a traced count: any chunk length, one
  compilation) from step ``start`` (shared by all runs), then evaluates (unless
  ``static.eval_float64``: the evaluation is then ``eval64``, a program of its own).
  It carries each run's epoch order (``epoch_order``) from step to step and draws a
  new one only when some run of the group enters a new epoch: the batches are those
  of ``batch_indices`` without a sort of the whole table at every step.
  """

  def init(table, runs):
    return jax.vmap(lambda r: init_state(static, table, r))(runs)

  def chunk(table, runs, states, scalars):
    n_steps, start = scalars
    epochs = lambda step: jax.vmap(lambda r: step // steps_per_epoch(r))(runs)
    orders = lambda epoch: jax.vmap(epoch_order)(runs, epoch)

    def step_fn(i, carry):
      states, order, have = carry
      step = start + i
      want = epochs(step)
      order = jax.lax.cond((want != have).any(), lambda: orders(want), lambda: order)
      one = lambda r, s, o: train_step(static, table, r, s, step, o)
      return jax.vmap(one)(runs, states, order), order, want

    first = epochs(start)
    states, _, _ = jax.lax.fori_loop(0, n_steps, step_fn, (states, orders(first), first))
    if static.eval_float64:
      return states, {}
    return states, jax.vmap(lambda r, p: evaluate(static, table, r, p))(runs, states.params)

  def eval64(table, runs, params):
    return jax.vmap(lambda r, p: evaluate(static, table, r, p, float64=True))(runs, params)

  return GroupFns(init, chunk, eval64)


__getattr__ = moved(
  "grokjax.train",
  {n: f"grokjax.layout.{n}" for n in ("make_sweep_fns", "padded_runs")},
)
