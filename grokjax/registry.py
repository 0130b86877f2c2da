"""Extension points: every method, optimizer, loss, model and progress measure is ONE
declaration here, made from grokjax's own modules or from a user's file or notebook.

A declaration names its config keys (``Key``: dotted path, default, check, help,
and whether the value is per-run or static). Everything else is derived from them:
``grokjax.config.default_config()`` gets the keys, validation checks them, every key
is a sweep axis ``sweep.<axis>``, every run records its values in runs.json, and the
docs' config table lists them.

- **per-run** values are traced: each run of one compiled program carries its own
  (a float32 number, switches as 0/1), so sweeping them costs one program;
- **static** values shape the program (a buffer's length, the model's width): runs
  whose static values differ train in separate programs, one per signature.

Registering under a name that is taken replaces the entry only with ``replace=True``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from grokjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key, ``config.<path>``; its type is the default's (bool, int, float, str).

  ``check(value) -> bool`` with ``rule`` saying in words what it demands ("> 0");
  ``choices`` (a tuple or a function returning one) for strings; ``per_run``: traced
  and vmapped (numbers and bools only), else static. ``axis`` names its sweep list
  ``sweep.<axis>`` and its runs.json field (default: the last part of ``path``);
  ``plural`` names the list where it is not the field (``sweep.seeds``: ``seed``).
  ``normalize(value)`` gives the canonical value (an alias's name) or a UserError.
  """

  path: str
  default: Any
  help: str = ""
  check: Callable[[Any], bool] | None = None
  rule: str = ""
  per_run: bool = False
  choices: tuple | Callable[[], Iterable] | None = None
  axis: str = ""
  plural: str = ""
  normalize: Callable[[Any], Any] | None = None

  @property
  def field(self) -> str:
    """The run field (runs.json) and sweep axis of this key."""
    return self.axis or self.path.rsplit(".", 1)[-1]

  @property
  def sweep_list(self) -> str:
    """Its sweep list: ``sweep.<sweep_list>``."""
    return self.plural or self.field

  @property
  def type(self) -> type:
    return type(self.default)

  def options(self) -> tuple | None:
    return tuple(self.choices()) if callable(self.choices) else self.choices

  def coerce(self, value, where: str):
    """The value as this key's type, or a UserError naming ``where`` and the fix."""
    t = self.type
    example = {bool: "True", int: "3", float: "0.5", str: "name"}.get(t, "...")
    if t is bool:
      ok = isinstance(value, bool)
    elif t is float:
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
      ok = isinstance(value, t) and not isinstance(value, bool)
    if not ok:
      raise UserError(
        f"{where}={value!r} is not {'an' if t is int else 'a'} {t.__name__}; "
        f"write e.g. --config.{where}={example}"
      )
    value = t(value)
    if t is float and not math.isfinite(value):
      raise UserError(f"{where}={value!r} must be a finite number; fix --config.{where}")
    if self.normalize is not None:
      value = self.normalize(value)
    options = self.options()
    if options is not None and value not in options:
      raise UserError(f"{where}={value!r} is unknown; choose one of: {', '.join(options)}")
    if self.check is not None and not self.check(value):
      raise UserError(f"{where}={value!r} must be {self.rule}; fix --config.{where}")
    return value


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: any of these hooks, each called with the run's values of
  ``keys`` as keyword arguments named by each key's ``field``.

  - ``gradient(**values)`` -> an optax GradientTransformation applied to the
    gradients before the optimizer (filters chain in registration order); with
    ``uses_step`` it also gets ``step=``, the update's index shared by all runs;
  - ``direction(**values)`` -> a GradientTransformation applied inside the optimizer
    to its step direction (Adam's m / (sqrt(v) + eps)), before the learning rate and
    the weight decay (the Optimizer's ``make`` gets them as ``directions=``);
  - ``init(params, **values)`` -> the initial parameters;
  - ``perturb(params, key, **values)`` -> the parameters the gradient is taken at
    (the update still moves the unperturbed ones): weight noise;
  - ``forward(key, **values)`` -> keyword arguments of the model's training forward
    pass (``model.apply``), e.g. ``dict(dropout=rate, rngs={"dropout": key})``; the
    evaluation never gets them;
  - ``after_update(params, **values)`` -> the parameters after each update.

  ``key`` is the run's own key for this update and method, a function of the run's
  seed, the step and the method's name (``grokjax.train.method_key``): a run draws
  the same noise alone or batched. With ``uses_key`` the ``gradient`` and
  ``direction`` hooks get it too, as ``key=`` (None when the optimizer is built
  for its initial state).

  ``active(values)`` says from a run's values (a dict by field) whether the run uses
  the method (default: every run). Runs train in one program per set of methods they
  use, so a program carries only what its runs use (no state, no work for the others),
  and a run's numbers never depend on a neighbour's methods: its program is decided
  by its own values alone. Sweeping a method's strength with its off value in the grid
  makes two programs (``sweep.grokfast_lamb=0,2``), each value in between one more run
  of the method's program.
  """

  name: str
  keys: tuple[Key, ...] = ()
  gradient: Callable | None = None
  init: Callable | None = None
  after_update: Callable | None = None
  active: Callable[[dict], bool] = lambda values: True
  uses_step: bool = False
  help: str = ""
  direction: Callable | None = None
  perturb: Callable | None = None
  forward: Callable | None = None
  uses_key: bool = False
  separate: dataclasses.InitVar[bool | None] = None  # gone: what every method does now

  def __post_init__(self, separate):
    if separate is not None:
      warnings.warn(
        f"Method {self.name!r}: separate= is no longer needed (every method's runs train in "
        "a program of their own, by its active rule); drop it",
        FutureWarning,
        stacklevel=3,
      )


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """``make(filters, **values)`` -> the GradientTransformation of one run: the
  methods' gradient filters (applied first) inside the optimizer's own chain. When a
  method of the program has a ``direction`` hook, ``make`` also gets
  ``directions=``: transformations of the step direction, applied after the
  optimizer's preconditioning and before its learning rate. ``label``: its name in
  figure titles, a string or a function of the config's ``optim`` section."""

  name: str
  keys: tuple[Key, ...]
  make: Callable
  help: str = ""
  label: str | Callable[[dict], str] = ""

  def title(self, optim: dict) -> str:
    """The optimizer in words for a config's ``optim`` section (figure titles)."""
    return (self.label(optim) if callable(self.label) else self.label) or self.name


@dataclasses.dataclass(frozen=True)
class Loss:
  """``fn(logits_BxC, labels_B, **values)`` -> the per-example loss of the answer
  token, with the run's values of ``keys`` by field (per-run ones traced)."""

  name: str
  fn: Callable
  help: str = ""
  keys: tuple[Key, ...] = ()


@dataclasses.dataclass(frozen=True)
class Model:
  """``make(vocab_size, num_classes, **values)`` -> a Flax module mapping int tokens
  [B, 4] (x, op, y, =) to answer logits [B, num_classes]. Its keys live under
  ``model.`` and are static (they shape the parameters); several models may share a
  key (``model.width``) when they declare it alike."""

  name: str
  keys: tuple[Key, ...]
  make: Callable
  help: str = ""


@dataclasses.dataclass(frozen=True)
class Measure:
  """A progress measure: ``fn(ctx, **values) -> scalar`` of one run at one
  checkpoint, where ``ctx`` (``grokjax.fourier.Context``) holds the parameters, the
  model's forward pass on the operation's full grid (``ctx.apply``), the logits there
  and their Fourier split (see grokjax.interp), and ``values`` the run's values of
  ``keys`` as keyword arguments named by each key's ``field`` (from its runs.json
  entry; a key missing there, in a sweep trained before it was declared, has its
  default). A measure's keys are static: runs whose values differ are measured by
  separate compiled functions. ``active(values)`` says whether a run gets the
  measure (default: every run; an expensive one can be switched on by a key).
  interp.json (``<name>_at``, its correlation with val accuracy) and the figure's
  panels iterate over the registered measures, so one declared in a user's file
  shows up there like the built-in ones; ``help`` labels its panel."""

  name: str
  fn: Callable
  help: str = ""
  keys: tuple[Key, ...] = ()
  active: Callable[[dict], bool] = lambda values: True

  def values(self, run: dict) -> dict:
    """The run's values of this measure's keys, by field (defaults where absent)."""
    return {k.field: run.get(k.field, k.default) for k in self.keys}


METHODS: dict[str, Method] = {}
OPTIMIZERS: dict[str, Optimizer] = {}
LOSSES: dict[str, Loss] = {}
MODELS: dict[str, Model] = {}
MEASURES: dict[str, Measure] = {}
_KINDS = {  # the order of the config keys, of the sweep axes and of runs.json's fields
  Optimizer: OPTIMIZERS,
  Method: METHODS,
  Loss: LOSSES,
  Model: MODELS,
  Measure: MEASURES,
}


def register(entry, replace: bool = False):
  """Adds a Method, Optimizer, Loss, Model or Measure to its registry; returns it.

  A key whose path another entry declares must be declared alike (same default,
  per-run flag and field); a per-run key holds a number or a bool.
  """
  table = _KINDS.get(type(entry))
  if table is None:
    raise TypeError(f"cannot register a {type(entry).__name__}; expected one of {list(_KINDS)}")
  if entry.name in table and not replace:
    raise ValueError(f"a {type(entry).__name__.lower()} named {entry.name!r} is registered")
  others = {k.path: k for e in entries() if e is not table.get(entry.name) for k in e.keys}
  fields = {k.field: k.path for k in others.values()}
  for key in entry.keys:
    if key.per_run and isinstance(entry, Measure):
      raise ValueError(f"measure key {key.path} is per-run; a measure's keys are static")
    if key.per_run and key.type not in (bool, int, float):
      raise ValueError(f"per-run key {key.path} holds a {key.type.__name__}; numbers only")
    old = others.get(key.path)
    if old is not None and (old.default, old.per_run, old.field) != (
      key.default,
      key.per_run,
      key.field,
    ):
      raise ValueError(f"key {key.path} is declared differently by another entry")
    if old is None and fields.get(key.field, key.path) != key.path:
      raise ValueError(f"sweep axis {key.field!r} of {key.path} is taken by {fields[key.field]}")
  table[entry.name] = entry
  return entry


def entries() -> list:
  """Every registered entry, kinds in a fixed order, each in registration order."""
  return [e for table in _KINDS.values() for e in table.values()]


def keys() -> list[Key]:
  """Every declared key once, in registration order."""
  return list({k.path: k for e in entries() for k in e.keys}.values())


def lookup(table: dict, name: str, what: str):
  """``table[name]``, or a UserError listing what is registered."""
  if name not in table:
    raise UserError(
      f"unknown {what} {name!r}; choose one of: {', '.join(table)} "
      "(or import the module that registers it in your config file)"
    )
  return table[name]
