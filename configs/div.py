"""The paper's setting: x / y mod 97, train fractions 0.1..0.9, 3 seeds, 1e5 steps.

27 runs in one program; a GPU job. Defaults live in grokjax.config.default_config().
"""

from grokjax.config import default_config


def get_config():
  return default_config()
