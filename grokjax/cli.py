"""Running the experiment scripts: absl flags, one-line errors for user mistakes.

Bad input exits with status 2 and a single line naming the problem and the fix;
nothing on disk is touched before the input is checked.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from grokjax.errors import Interrupted, UserError


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


_HELP_FLAGS = (app.HelpFlag, app.HelpfullFlag, app.HelpXMLFlag)


def _asks_for_help(argv) -> bool:
  """Whether argv (before a bare '--') names one of absl's help flags: --help, -?,
  --helpshort, --helpfull or --helpxml."""
  for arg in argv[1:]:
    if arg == "--":
      return False
    name = arg.lstrip("-").partition("=")[0]
    if arg.startswith("-") and name in flags.FLAGS and isinstance(flags.FLAGS[name], _HELP_FLAGS):
      return True
  return False


def _config_path(argv) -> str:
  """The --config file named in argv (for messages)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "the --config file"


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    # absl's help flags print the usage to stdout, then exit with status 1, as for an
    # error; asking for help is no error: exit 0.
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)
    raise
  except (flags.Error, UserError) as e:
    message = str(e) or type(e).__name__
    if "Traceback" in message:  # config_flags quotes an error of get_config(): keep its last line
      message = message.strip().splitlines()[-1].removeprefix(f"{UserError.__module__}.UserError: ")
    _fail(" ".join(message.split()))
  except AttributeError as e:
    # config_flags: an override of a key the config does not have, e.g. --config.stpes=10
    text = str(e).strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    key, _, hint = text.partition("\n")
    key = key.strip("'\"")
    hint = f" ({hint.strip().rstrip('?')}?)" if hint else ""
    _fail(f"unknown config key {key!r}{hint}; fix the --config.<key>=value flag")
  except (OSError, SyntaxError, ImportError) as e:
    _fail(
      f"cannot load {_config_path(argv)} ({type(e).__name__}: {str(e).splitlines()[0]}); "
      "check the --config path"
    )
  except Exception as e:  # the config file's get_config() raised
    first = str(e).splitlines()[0] if str(e) else ""
    _fail(f"{_config_path(argv)}: get_config() raised {type(e).__name__}: {first}; fix that file")


def config(holder):
  """The value of a ``config_flags`` flag; a missing or broken file is a UserError.

  (config_flags defers a load failure to the config's first use.)
  """
  cfg = holder.value
  try:
    cfg.keys()
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    raise UserError(
      f"cannot load --config {flags.FLAGS[holder.name].config_filename}: {reason}; check the path"
    ) from None
  except AttributeError:
    raise UserError(
      f"--config {flags.FLAGS[holder.name].config_filename}: get_config() returned "
      f"a {type(cfg).__name__}, not a ConfigDict"
    ) from None
  return cfg


def run_dir_arg(argv, usage: str) -> str:
  """The one positional RUN_DIR of a script's argv; a UserError naming ``usage`` otherwise."""
  if len(argv) < 2:
    raise UserError(f"give exactly one run directory: {usage}")
  if len(argv) > 2:
    raise UserError(f"unexpected arguments {argv[2:]}; give one RUN_DIR")
  return argv[1]


def run(main) -> None:
  """``absl.app.run`` with user errors reported in one line and exit status 2."""

  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
      return main(argv)
    except UserError as e:
      _fail(str(e))
    except Interrupted as e:
      print(str(e), file=sys.stderr)
      sys.exit(130)
    except KeyboardInterrupt:
      print("interrupted before training started; nothing was changed", file=sys.stderr)
      sys.exit(130)

  app.run(guarded, flags_parser=_parse_flags)
