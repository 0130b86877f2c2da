"""Any operation of the paper with its defaults: --config configs/ops.py:cubic

The argument is an operation name (add, sub, div, div_odd_sub, sq_sum, quad, quad_x,
cubic, cubic2, s5, s5_conj, s5_aba, mul, or an alias such as cubic_polynomial).
"""

from grokjax.config import default_config
from grokjax.data import canonical_op


def get_config(op="div"):
  config = default_config()
  config.op = canonical_op(op)
  config.name = config.op
  return config
