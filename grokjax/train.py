"""Pure training: state init, train step, full-table evaluation, chunked loops.

Everything here is written for ONE run and made batched with ``jax.vmap``: a sweep
is K runs sharing one table, each with its own parameters, optimizer state,
hyperparameters and train mask over the full table. A smaller train set is a
masked batch of the static size, so train fractions never cause a recompile.

``make_sweep_fns`` computes every run in a vmap group of a fixed size (the exact
layout: a run's numbers do not depend on the other runs, their number or the device
count) or, on accelerators by default, all of a device's runs in one vmap.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grokjax import registry
from grokjax.data import Table
from grokjax.errors import UserError


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
  group's): ``make_sweep_fns`` maps them over the groups of a sweep's run axis."""

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


def padded_runs(k: int, group: int | None, devices: int = 1) -> int:
  """The length of a run axis of ``k`` runs once padded: a multiple of ``devices``
  (each device holds as many runs) times ``group`` (each device's runs form whole
  groups); ``group=None``: each device's runs are one group of any size."""
  unit = devices * (group or 1)
  return -(-k // unit) * unit


def _pad(tree, k: int, to: int):
  """Copies of the last run appended along the run axis, from ``k`` runs to ``to``."""
  if to == k:
    return tree
  idx = jnp.minimum(jnp.arange(to), k - 1)
  return jax.tree.map(lambda x: x[idx], tree)


def _num_runs(tree) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def _in_groups(fn, group: int | None):
  """``fn(table, *batched, scalars)`` of ONE group made a function of a run axis of
  whole groups: cut into groups of ``group`` that run one after another
  (``lax.map``); None: the whole axis is one group."""

  def grouped(table, *args):
    batched, scalars = args[:-1], args[-1]
    k = _num_runs(batched)
    g = group or k
    split = lambda x: x.reshape(k // g, g, *x.shape[1:])
    out = jax.lax.map(lambda b: fn(table, *b, scalars), jax.tree.map(split, batched))
    return jax.tree.map(lambda x: x.reshape(k, *x.shape[2:]), out)

  return grouped


def _padded(fn, group: int | None, devices: int = 1):
  """``fn`` on a run axis of any length: padded with copies of the last run to
  ``padded_runs``, the padding dropped from the result."""

  def padded(table, *args):
    batched, scalars = args[:-1], args[-1]
    k = _num_runs(batched)
    to = padded_runs(k, group, devices)
    out = fn(table, *(_pad(b, k, to) for b in batched), scalars)
    return out if to == k else jax.tree.map(lambda x: x[:k], out)

  padded.__name__ = padded.__qualname__ = fn.__name__  # jit(chunk) in logs and profiles
  return padded


class _PerDevice:
  """A one-device program run on every device's share of the run axis (exact mode on
  several devices): each device runs the very program one device alone runs, which a
  program partitioned over the devices (``shard_map``) is not: XLA optimises a
  partitioned program differently (a division becomes a multiplication by the
  reciprocal in one and not the other), which moves the last bits.

  Arguments and results are global arrays sharded over ``mesh`` on the run axis (the
  table replicated), as ``grokjax.sweep.device_inputs`` makes them; the run axis is
  padded to whole groups on every device first if it is not. The program is compiled
  once per device (JAX's persistent compilation cache serves the later ones on GPUs).
  """

  def __init__(self, fn, group: int, mesh, donate=()):
    self._jit = jax.jit(fn, donate_argnums=donate)
    self._compiled = {}  # argument shapes -> each device's compiled program
    self._group, self._mesh = group, mesh
    self._runs = NamedSharding(mesh, P(*mesh.axis_names))
    self._table = NamedSharding(mesh, P())

  def _devices(self):
    return [d for d in self._mesh.devices.flat if d.process_index == jax.process_index()]

  def _put(self, tree, sharding, k: int, to: int):
    ok = all(
      isinstance(x, jax.Array) and x.sharding == sharding and x.shape[0] == to
      for x in jax.tree.leaves(tree)
    )
    if ok:
      return tree
    return jax.jit(lambda t: _pad(t, k, to), out_shardings=sharding)(tree)

  def _split(self, table, args):
    """(k, padded k, [each device's arguments])."""
    batched, scalars = args[:-1], args[-1]
    k = _num_runs(batched)
    to = padded_runs(k, self._group, self._mesh.size)
    table = jax.tree.map(lambda x: self._put(x, self._table, x.shape[0], x.shape[0]), table)
    batched = [self._put(b, self._runs, k, to) for b in batched]
    leaves, treedef = jax.tree.flatten((table, *batched))
    shards = [{s.device: s.data for s in x.addressable_shards} for x in leaves]
    each = [jax.tree.unflatten(treedef, [m[d] for m in shards]) for d in self._devices()]
    return k, to, [(*a, scalars) for a in each]

  def lower(self, table, *args):
    """The program of this process's first device, lowered (its compile time and memory)."""
    return self._jit.lower(*self._split(table, args)[2][0])

  def _programs(self, each) -> list:
    """The compiled program of every device for these arguments' shapes: compiled the
    first time, all devices at once (XLA compiles outside the GIL)."""
    shapes = jax.tree.map(lambda x: (np.shape(x), np.result_type(x)), each[0])
    key = (jax.tree.structure(shapes), tuple(jax.tree.leaves(shapes)))
    if key not in self._compiled:
      with concurrent.futures.ThreadPoolExecutor(len(each)) as pool:
        compile_one = lambda a: self._jit.lower(*a).compile()
        self._compiled[key] = list(pool.map(compile_one, each))
    return self._compiled[key]

  def __call__(self, table, *args):
    k, to, each = self._split(table, args)
    outs = [program(*a) for program, a in zip(self._programs(each), each)]
    per_leaf = zip(*(jax.tree.leaves(o) for o in outs))
    assembled = [
      jax.make_array_from_single_device_arrays((to, *xs[0].shape[1:]), self._runs, list(xs))
      for xs in per_leaf
    ]
    out = jax.tree.unflatten(jax.tree.structure(outs[0]), assembled)
    return out if to == k else jax.jit(lambda t: jax.tree.map(lambda x: x[:k], t))(out)


class _Chunk:
  """The jitted chunk of one device; the states are donated when the run axis needs
  no padding (else their buffers could not be reused anyway)."""

  def __init__(self, fn, group):
    self._donating, self._plain = jax.jit(fn, donate_argnums=2), jax.jit(fn)
    self._group = group

  def _pick(self, runs):
    k = runs.seed.shape[0]
    return self._donating if padded_runs(k, self._group) == k else self._plain

  def __call__(self, table, runs, states, n_steps):
    return self._pick(runs)(table, runs, states, n_steps)

  def lower(self, table, runs, states, n_steps):
    return self._pick(runs).lower(table, runs, states, n_steps)


def make_sweep_fns(static: Static, precision=None, group=None, mesh=None):
  """Jitted (init, chunk) over a leading run axis.

  ``init(table, runs) -> states``; ``chunk(table, runs, states, n_steps) ->
  (states, metrics)`` with each metric a [K] array. ``states`` is donated.
  ``precision`` ("high", "highest", or None for JAX's default, which may use TF32
  on recent NVIDIA GPUs) is the float32 matmul precision the chunk compiles with.

  ``group`` (exact mode) is how many runs are vmapped together: every run is computed
  in a group of exactly ``group`` (the run axis is padded with copies of its last run,
  dropped from the results), the groups one after another, and on several devices
  each device runs the one-device program on its share (``_PerDevice``): a run's
  numbers depend neither on how many runs there are, nor on its neighbours, nor on
  the device count. None (fast mode): each device's runs are one vmap (fastest on an
  accelerator, but the program, so the last bits, change with K and the devices).
  ``mesh`` (one axis): the devices the run axis is split over (None: one device).
  With ``static.eval_float64`` the evaluation is a second program, traced and run
  with ``jax_enable_x64`` on: 64-bit types exist there and nowhere else.
  """
  fns = make_group_fns(static)
  devices = mesh.size if mesh is not None else 1
  init_groups = _in_groups(lambda table, runs, _: fns.init(table, runs), group)
  chunk_groups = _in_groups(fns.chunk, group)
  eval_groups = _in_groups(lambda table, runs, params, _: fns.eval64(table, runs, params), group)

  # The programs, each (table, *run-axis arguments, scalars) -> run-axis results.
  def init_program(table, runs, scalars):
    return init_groups(table, runs, scalars)

  def chunk_program(table, runs, states, n_steps):
    with jax.default_matmul_precision(precision):
      start = states.step[0]  # runs move in lockstep
      return chunk_groups(table, runs, states, (n_steps, start))

  def eval_program(table, runs, params, scalars):
    with jax.default_matmul_precision(precision):
      return eval_groups(table, runs, params, scalars)

  init_program.__name__, chunk_program.__name__, eval_program.__name__ = "init", "chunk", "eval64"

  if devices == 1:
    init_runs = jax.jit(_padded(init_program, group))
    chunk = _Chunk(_padded(chunk_program, group), group)
    eval_runs = jax.jit(_padded(eval_program, group))
  elif group is not None:
    init_runs = _PerDevice(init_program, group, mesh)
    chunk = _PerDevice(chunk_program, group, mesh, donate=2)
    eval_runs = _PerDevice(eval_program, group, mesh)
  else:  # fast mode on several devices: one program, partitioned

    def sharded(fn, n_batched):
      spec = P(*mesh.axis_names)
      specs = (P(), *[spec] * n_batched, P())
      local = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)
      return _padded(local, None, devices)

    init_runs = jax.jit(sharded(init_program, 1))
    chunk = jax.jit(sharded(chunk_program, 2), donate_argnums=2)
    eval_runs = jax.jit(sharded(eval_program, 2))

  def init(table, runs):
    return init_runs(table, runs, ())

  def eval64(table, runs, params):
    return eval_runs(table, runs, params, ())

  if not static.eval_float64:
    return init, chunk

  def chunk_then_eval64(table, runs, states, n_steps):
    states, _ = chunk(table, runs, states, n_steps)
    with jax.enable_x64(True):
      return states, eval64(table, runs, states.params)

  return init, chunk_then_eval64
