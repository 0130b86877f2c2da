"""Running the experiment scripts: absl flags, one-line errors for user mistakes.

Bad input exits with status 2 and a single line naming the problem and the fix;
nothing on disk is touched before the input is checked.
"""

from __future__ import annotations

import sys

from absl import app, flags

from grokjax.errors import UserError


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, UserError) as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except (OSError, SyntaxError, ImportError, AttributeError, TypeError, ValueError) as e:
    # config_flags loads the config file while parsing: a missing or broken file.
    _fail(f"cannot load the config ({type(e).__name__}: {str(e).splitlines()[0]}); "
          "check the --config path and the file's get_config()")


def run(main) -> None:
  """``absl.app.run`` with user errors reported in one line and exit status 2."""

  def guarded(argv):
    try:
      return main(argv)
    except UserError as e:
      _fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
