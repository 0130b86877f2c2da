import itertools

import numpy as np
import pytest

from grokjax import data
from grokjax.errors import UserError

P = 7  # prime, small enough for plain loops


def _inverse(y, p):
  return next(z for z in range(1, p) if y * z % p == 1)


# Independent definitions, one Python loop each, written from the paper's table.
REFERENCE = {
  "add": lambda x, y, p: (x + y) % p,
  "sub": lambda x, y, p: (x - y) % p,
  "mul": lambda x, y, p: (x * y) % p,
  "mul_nz": lambda x, y, p: (x * y) % p,  # y != 0 (Grokfast's main.py)
  "div": lambda x, y, p: (x * _inverse(y, p)) % p,
  "div_odd_sub": lambda x, y, p: (x * _inverse(y, p)) % p if y % 2 else (x - y) % p,
  "sq_sum": lambda x, y, p: (x * x + y * y) % p,
  "quad": lambda x, y, p: (x * x + x * y + y * y) % p,
  "quad_x": lambda x, y, p: (x * x + x * y + y * y + x) % p,
  "cubic": lambda x, y, p: (x**3 + x * y) % p,
  "cubic2": lambda x, y, p: (x**3 + x * y * y + y) % p,
}
DIVIDES = {"div", "div_odd_sub"}
NONZERO_Y = DIVIDES | {"mul_nz"}


@pytest.mark.parametrize("op", sorted(REFERENCE))
def test_modular_tables_match_a_plain_loop(op):
  table = data.make_table(op, P)
  expected = {
    (x, y): REFERENCE[op](x, y, P) for x in range(P) for y in range(1 if op in NONZERO_Y else 0, P)
  }
  got = {(int(i[0]), int(i[2])): int(z) for i, z in zip(table.inputs, table.labels)}
  assert got == expected
  assert table.inputs.dtype == np.int32 and table.labels.dtype == np.int32
  assert table.inputs.shape == (len(expected), 4)
  assert set(table.inputs[:, 1]) == {data.op_token(op, P)}
  assert set(table.inputs[:, 3]) == {data.eq_token(P)}
  assert table.n == P and table.inputs.max() < table.vocab_size


def _compose(*perms):
  """x∘y∘...: apply the rightmost permutation first."""
  out = tuple(range(5))
  for q in reversed(perms):
    out = tuple(q[i] for i in out)
  return out


def _s5_reference(op):
  perms = list(itertools.permutations(range(5)))
  inv = lambda q: tuple(sorted(range(5), key=lambda i: q[i]))
  f = {
    "s5": lambda a, b: _compose(a, b),
    "s5_conj": lambda a, b: _compose(a, b, inv(a)),
    "s5_aba": lambda a, b: _compose(a, b, a),
  }[op]
  return {(i, j): perms.index(f(a, b)) for i, a in enumerate(perms) for j, b in enumerate(perms)}


@pytest.mark.parametrize("op", ["s5", "s5_conj", "s5_aba"])
def test_s5_tables_match_a_plain_loop(op):
  table = data.make_table(op)
  got = {(int(i[0]), int(i[2])): int(z) for i, z in zip(table.inputs, table.labels)}
  assert got == _s5_reference(op)
  assert table.n == 120 and len(table.labels) == 120 * 120


def test_s5_composition_convention():
  # (x∘y)[i] = x[y[i]]: with x a 3-cycle and y a swap the order matters.
  perms = [tuple(q) for q in data.s5_elements()]
  x, y = (1, 2, 0, 3, 4), (1, 0, 2, 3, 4)
  table = data.make_table("s5")
  row = perms.index(x) * 120 + perms.index(y)
  assert perms[table.labels[row]] == tuple(x[y[i]] for i in range(5))


def test_every_op_is_covered():
  assert set(REFERENCE) | {"s5", "s5_conj", "s5_aba"} == set(data.OPS)


def test_aliases():
  assert data.canonical_op("cubic_polynomial") == "cubic"
  assert data.canonical_op("division") == "div"
  assert data.canonical_op("addition") == "add"
  np.testing.assert_array_equal(
    data.make_table("division", P).labels, data.make_table("div", P).labels
  )


def test_division_never_divides_by_zero():
  for op in DIVIDES:
    assert (data.make_table(op, 97).inputs[:, 2] != 0).all()


@pytest.mark.parametrize(
  "op, p, match",
  [
    ("mod", 7, "unknown op 'mod'; choose one of: add"),
    ("div", 9, "must be prime"),
    ("div_odd_sub", 1, "p=1 is not a modulus"),
    ("add", 1, "p=1 is not a modulus"),
    ("add", 2.5, "not a modulus"),
  ],
)
def test_bad_tables_are_refused(op, p, match):
  with pytest.raises(UserError, match=match):
    data.make_table(op, p)


def test_non_prime_is_fine_without_division():
  table = data.make_table("add", 10)
  assert len(table.labels) == 100


def test_split_mask():
  a = data.split_mask(100, 0.3, seed=0)
  assert a.dtype == bool and a.sum() == 30
  np.testing.assert_array_equal(a, data.split_mask(100, 0.3, seed=0))
  assert (a != data.split_mask(100, 0.3, seed=1)).any()
  assert data.split_mask(100, 0.001, 0).sum() == 1  # never an empty side
  assert data.split_mask(100, 0.999, 0).sum() == 99
  for bad in (0, 1, 1.5, -0.1):
    with pytest.raises(UserError, match="outside \\(0, 1\\)"):
      data.split_mask(100, bad, 0)
