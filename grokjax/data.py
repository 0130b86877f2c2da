"""Operation tables of Power et al. (2022) and per-run train/validation splits.

A table holds every equation ``x op y = z`` of one binary operation as int32 token
rows ``inputs[N, 4] = (x, op, y, =)`` and int32 ``labels[N] = z``. Tokens ``0..n-1``
are the n elements (residues mod p, or the 120 permutations of S5 in
``itertools.permutations`` order); the operation and ``=`` tokens follow them, so
tables of different operations over the same elements share one vocabulary.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import jax
import numpy as np

from grokjax.errors import UserError


def _inv(y, p):
  return pow_mod(y, p - 2, p)


def pow_mod(base, exp, p):
  """Elementwise ``base ** exp mod p`` on int64 arrays (square and multiply)."""
  base = np.asarray(base, np.int64) % p
  out = np.ones_like(base)
  while exp:
    if exp & 1:
      out = out * base % p
    base = base * base % p
    exp >>= 1
  return out


# name -> (formula on int64 arrays, needs a field (prime p), y may be 0)
_MODULAR: dict[str, tuple[Callable, bool, bool]] = {
  "add": (lambda x, y, p: x + y, False, True),
  "sub": (lambda x, y, p: x - y, False, True),
  "mul": (lambda x, y, p: x * y, False, True),
  "mul_nz": (lambda x, y, p: x * y, False, False),  # y != 0, as Grokfast's main.py
  "div": (lambda x, y, p: x * _inv(y, p), True, False),
  "div_odd_sub": (lambda x, y, p: np.where(y % 2 == 1, x * _inv(y, p), x - y), True, False),
  "sq_sum": (lambda x, y, p: x**2 + y**2, False, True),
  "quad": (lambda x, y, p: x**2 + x * y + y**2, False, True),
  "quad_x": (lambda x, y, p: x**2 + x * y + y**2 + x, False, True),
  "cubic": (lambda x, y, p: x**3 + x * y, False, True),
  "cubic2": (lambda x, y, p: x**3 + x * y**2 + y, False, True),
}
# x∘y applies y first, then x: (x∘y)[i] = x[y[i]].
_S5: dict[str, Callable] = {
  "s5": lambda x, y, inv: (x, y),
  "s5_conj": lambda x, y, inv: (x, y, inv[x]),
  "s5_aba": lambda x, y, inv: (x, y, x),
}
OPS: tuple[str, ...] = tuple(_MODULAR) + tuple(_S5)
# mul_nz is mul on the rows with y != 0: the same operation, so the same op token (and
# the vocabulary, and with it every model's initial numbers, stays as it was).
_SAME_TOKEN = {"mul_nz": "mul"}
_TOKEN_OPS = tuple(op for op in OPS if op not in _SAME_TOKEN)
ALIASES = {
  "addition": "add",
  "subtraction": "sub",
  "multiplication": "mul",
  "division": "div",
  "cubic_polynomial": "cubic",
}
S5_ORDER = 120


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Table:
  """The equations of one or more operations: ``n`` elements (answer classes),
  ``vocab_size`` tokens. A pytree of the two arrays (``n`` and ``vocab_size`` are
  static), so the same value goes to the device and into a jitted function."""

  inputs: np.ndarray  # int32 [N, 4]: x, op, y, =
  labels: np.ndarray  # int32 [N]
  n: int = dataclasses.field(metadata=dict(static=True))
  vocab_size: int = dataclasses.field(metadata=dict(static=True))


def canonical_op(op: str) -> str:
  """The canonical name of an operation or alias; a UserError for unknown names."""
  name = ALIASES.get(op, op)
  if name not in OPS:
    raise UserError(
      f"unknown op {op!r}; choose one of: {', '.join(OPS)} (aliases: {', '.join(ALIASES)})"
    )
  return name


def is_prime(p: int) -> bool:
  return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def num_elements(op: str, p: int) -> int:
  """The number of elements (answer classes) of op's table: p, or 120 for S5."""
  op = canonical_op(op)
  if op in _S5:
    return S5_ORDER
  if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 2:
    raise UserError(f"p={p!r} is not a modulus; set p to an integer >= 2 (the paper uses 97)")
  if _MODULAR[op][1] and not is_prime(p):
    raise UserError(f"op {op!r} divides, so p must be prime but p={p}; use a prime such as 97")
  return int(p)


def vocab_size(n: int) -> int:
  """Elements, one token per operation, and '='."""
  return n + len(_TOKEN_OPS) + 1


def op_token(op: str, n: int) -> int:
  op = canonical_op(op)
  return n + _TOKEN_OPS.index(_SAME_TOKEN.get(op, op))


def eq_token(n: int) -> int:
  return n + len(_TOKEN_OPS)


def s5_elements() -> np.ndarray:
  """The 120 permutations of range(5), int64 [120, 5], in itertools order."""
  return np.array(list(itertools.permutations(range(5))), np.int64)


def _s5_table(op: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  perms = s5_elements()
  index = {tuple(q): i for i, q in enumerate(perms)}
  inv = np.array([index[tuple(np.argsort(q))] for q in perms])
  x, y = (a.ravel() for a in np.meshgrid(np.arange(120), np.arange(120), indexing="ij"))
  factors = _S5[op](x, y, inv)
  # Compose right to left: the rightmost permutation is applied first.
  result = perms[factors[-1]]
  for f in reversed(factors[:-1]):
    result = np.take_along_axis(perms[f], result, axis=1)
  z = np.array([index[tuple(r)] for r in result])
  return x, y, z


def make_table(op: str, p: int = 97, n_tokens: int | None = None) -> Table:
  """The full table of ``op`` (canonical name or alias) over Z_p, or over S5.

  Division-type operations skip y = 0 and need a prime p. ``n_tokens`` (default:
  the op's own element count) sets the element tokens of the vocabulary, so tables
  of operations over different sets (Z_97 and S5, say) can share one.
  """
  op = canonical_op(op)
  n = num_elements(op, p)
  vocab_n = n if n_tokens is None else max(n_tokens, n)
  if op in _S5:
    x, y, z = _s5_table(op)
  else:
    formula, _, y_may_be_zero = _MODULAR[op]
    x, y = (a.ravel() for a in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if not y_may_be_zero:
      x, y = x[y != 0], y[y != 0]
    z = formula(x.astype(np.int64), y.astype(np.int64), p) % p
  inputs = np.stack(
    [x, np.full_like(x, op_token(op, vocab_n)), y, np.full_like(x, eq_token(vocab_n))], 1
  )
  return Table(inputs.astype(np.int32), z.astype(np.int32), vocab_n, vocab_size(vocab_n))


def stack_tables(ops, p: int) -> tuple[Table, list[slice]]:
  """The tables of several operations, one after another in a shared vocabulary,
  and the rows of each. The answer classes are the largest element set's."""
  n = max(num_elements(op, p) for op in ops)
  tables = [make_table(op, p, n_tokens=n) for op in ops]
  ends = np.cumsum([len(t.labels) for t in tables])
  rows = [slice(int(e - len(t.labels)), int(e)) for t, e in zip(tables, ends)]
  inputs = np.concatenate([t.inputs for t in tables])
  return Table(inputs, np.concatenate([t.labels for t in tables]), n, vocab_size(n)), rows


def split_mask(num_examples: int, train_frac: float, seed: int) -> np.ndarray:
  """A bool mask [num_examples] marking round(train_frac * N) random train examples.

  Depends only on (num_examples, train_frac, seed); at least one example lands on
  each side.
  """
  check_train_frac(train_frac)
  n_train = min(max(round(train_frac * num_examples), 1), num_examples - 1)
  order = np.random.default_rng(seed).permutation(num_examples)
  mask = np.zeros(num_examples, bool)
  mask[order[:n_train]] = True
  return mask


def check_train_frac(train_frac: float) -> None:
  if not 0 < train_frac < 1:
    raise UserError(
      f"train fraction {train_frac!r} is outside (0, 1); "
      "use e.g. --config.sweep.train_fracs=0.3,0.5"
    )
