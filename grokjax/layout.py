"""How a sweep's runs map onto vmap groups and devices: the one execution layout.

``make_sweep_fns`` turns the per-run math of grokjax.train (vmapped over one group by
``train.make_group_fns``) into jitted functions over a run axis of any length: in the
exact layout every run is computed in a vmap group of exactly G runs (the axis padded
with copies of its last run, ``pad_index``, the padding dropped from the results), so
a run's numbers depend neither on the other runs, their number nor the device count;
in the fast layout (accelerators' default) all of a device's runs form one vmap.
Padding is one rule (``padded_runs``, ``pad_index``), used on the host by
grokjax.plan (the run arrays), grokjax.devices (checkpoints saved with another padding) and here.
"""

from __future__ import annotations

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from grokjax import train


def mesh() -> jax.sharding.Mesh:
  """Every device of every process on one axis, ``runs``: the run axis is split over it."""
  return jax.make_mesh((jax.device_count(),), ("runs",), axis_types=(AxisType.Auto,))


def vmap_group(cfg) -> int | None:
  """Runs vmapped together: every run is computed in a group of exactly this many
  (``make_sweep_fns``), so its numbers do not depend on the other runs, their
  number or the device count; None: all of a device's runs in one vmap (the program
  then changes with K). ``config.vmap_group`` if > 0; else, on an accelerator, None
  (one vmap is where batching pays: docs/performance.md says what exactness costs
  there); on CPU 1: one run at a time already keeps the cores busy, and a fixed group
  would compute padding runs for a K it does not divide (docs/performance.md)."""
  if cfg.vmap_group:
    return cfg.vmap_group
  return 1 if jax.default_backend() == "cpu" else None


def padded_runs(k: int, group: int | None, devices: int = 1) -> int:
  """The length of a run axis of ``k`` runs once padded: a multiple of ``devices``
  (each device holds as many runs) times ``group`` (each device's runs form whole
  groups); ``group=None``: each device's runs are one group of any size."""
  unit = devices * (group or 1)
  return -(-k // unit) * unit


def pad_index(k: int, to: int, xp=np):
  """The runs of a run axis of ``k`` padded to ``to``: each run, then copies of the
  last (``xp``: numpy on the host, jax.numpy inside a program)."""
  return xp.minimum(xp.arange(to), k - 1)


def pad(tree, k: int, to: int):
  """``tree``'s run axis padded from ``k`` runs to ``to`` (``pad_index``), in a program."""
  if to == k:
    return tree
  idx = pad_index(k, to, jnp)
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
    out = fn(table, *(pad(b, k, to) for b in batched), scalars)
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
  table replicated), as ``grokjax.devices.device_inputs`` makes them; the run axis is
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
    return jax.jit(lambda t: pad(t, k, to), out_shardings=sharding)(tree)

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


class _OnHost:
  """Exact mode on one CPU: the program of ONE vmap group, called on each group in turn.
  It is the same program whatever the number of runs, so one compiled program (and JAX's
  persistent compilation cache) serves every sweep of a config, whatever its K. The
  groups are cut and joined on the host, in NumPy (on a CPU the device's memory is the
  host's: a copy, no program to compile); each group is padded with copies of the last
  run (``pad_index``) and the padding dropped from the results."""

  def __init__(self, fn, group: int):
    self._jit = jax.jit(fn)
    self._group = group
    self._device = jax.devices()[0]
    self._traced = _padded(fn, group)  # inside a trace (jax.eval_shape, jit): lax.map

  def _groups(self, table, args):
    """(k, each group's arguments, put on the device as they are taken)."""
    batched, scalars = jax.device_get(args[:-1]), args[-1]
    k = _num_runs(batched)
    idx = pad_index(k, padded_runs(k, self._group))
    cut = lambda i: jax.tree.map(lambda x: x[idx[i : i + self._group]], batched)
    each = (jax.device_put(cut(i), self._device) for i in range(0, len(idx), self._group))
    return k, ((table, *part, scalars) for part in each)

  def lower(self, table, *args):
    """The program of one group, lowered (its compile time and memory)."""
    return self._jit.lower(*next(self._groups(table, args)[1]))

  def __call__(self, table, *args):
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((table, args))):
      return self._traced(table, *args)
    k, each = self._groups(table, args)
    outs = jax.device_get([self._jit(*a) for a in each])
    joined = jax.tree.map(lambda *xs: np.concatenate(xs)[:k], *outs)
    return jax.device_put(joined, self._device)


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


def make_sweep_fns(static: train.Static, precision=None, group=None, mesh=None):
  """Jitted (init, chunk) over a leading run axis.

  ``init(table, runs) -> states``; ``chunk(table, runs, states, n_steps) ->
  (states, metrics)`` with each metric a [K] array. ``states`` is donated.
  ``precision`` ("high", "highest", or None for JAX's default, which may use TF32
  on recent NVIDIA GPUs) is the float32 matmul precision the chunk compiles with.

  ``group`` (exact mode) is how many runs are vmapped together: every run is computed
  in a group of exactly ``group`` (the run axis is padded with copies of its last run,
  dropped from the results), the groups one after another (on one CPU the program of one
  group, called on each group in turn: one compiled program whatever K, ``_OnHost``), and
  on several devices each device runs the one-device program on its share
  (``_PerDevice``): a run's numbers depend neither on how many runs there are, nor on
  its neighbours, nor on the device count. None (fast mode): each device's runs are one
  vmap (fastest on an accelerator, but the program, so the last bits, change with K and
  the devices).
  ``mesh`` (one axis): the devices the run axis is split over (None: one device).
  With ``static.eval_float64`` the evaluation is a second program, traced and run
  with ``jax_enable_x64`` on: 64-bit types exist there and nowhere else.
  """
  fns = train.make_group_fns(static)
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
  programs = init_program, chunk_program, eval_program

  if devices == 1 and group is not None and jax.default_backend() == "cpu":
    init_runs, chunk, eval_runs = (_OnHost(f, group) for f in programs)
  elif devices == 1:
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
