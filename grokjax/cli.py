"""Running the experiment scripts: absl flags, one-line errors for user mistakes.

Bad input exits with status 2 and a single line naming the problem and the fix;
nothing on disk is touched before the input is checked.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
from pathlib import Path

from absl import app, flags, logging

from grokjax.errors import Interrupted, UserError, disk_full


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


def _config_file(argv) -> str:
  """The --config file named in argv, without a ``:argument`` for get_config."""
  path = _config_path(argv)
  return path if Path(path).exists() else path.rsplit(":", 1)[0]


def _last_wins(argv: list[str]) -> list[str]:
  """argv with only the last of repeated ``--config.<key>=value`` flags: a later flag
  replaces an earlier one, sweep lists included (config_flags would join those)."""
  end = argv.index("--") if "--" in argv else len(argv)
  last = {}
  for i, arg in enumerate(argv[:end]):
    if arg.startswith("--") and "." in arg.partition("=")[0] and "=" in arg:
      last[arg.partition("=")[0]] = i
  keep = set(last.values())
  return [
    arg
    for i, arg in enumerate(argv)
    if i >= end or not (arg.startswith("--") and arg.partition("=")[0] in last) or i in keep
  ]


def _get_config_error(argv, message: str) -> str:
  """One line for an error that config_flags quotes with its traceback: that of the
  config file's get_config()."""
  last = message.strip().splitlines()[-1]
  user = f"{UserError.__module__}.UserError: "
  if last.startswith(user):
    return last.removeprefix(user)
  path = _config_file(argv)
  if "get_config() takes 0 positional arguments" in last:
    return (
      f"{path}: get_config() takes no argument, but --config {_config_path(argv)} passes one; "
      f"give --config {path}"
    )
  return f"{path}: get_config() raised {last}; fix that file"


def _parse_flags(argv):
  argv = _last_wins(list(argv))
  given = any(a == "--config" or a.startswith("--config=") for a in argv)
  config_dir = Path(_config_file(argv)).parent.absolute()
  if given and config_dir.is_dir() and str(config_dir) not in sys.path:
    sys.path.append(str(config_dir))  # the config file's own modules import (after all others)
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
      message = _get_config_error(argv, message)
    _fail(" ".join(message.split()))
  except AttributeError as e:
    if "has no attribute 'get_config'" in str(e):
      _fail(
        f"{_config_file(argv)} defines no get_config(); a config file defines get_config() "
        "returning a ConfigDict, e.g. configs/quick.py"
      )
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


class NoOrbaxErrors(std_logging.Filter):
  """Drops Orbax's own error logs (tracebacks of its background threads), and
  asyncio's "Task exception was never retrieved" of an Orbax read given up on (a
  damaged checkpoint): each of their failures reaches the script as an exception,
  said in one line."""

  def filter(self, record) -> bool:
    if record.levelno < std_logging.ERROR:
      return True
    if "orbax" in record.pathname:
      return False
    return not (record.name == "asyncio" and "orbax" in record.getMessage())


def _quiet_closed_loops(default):
  """An unraisable-exception hook that drops the "Event loop is closed" of a TensorStore
  read finishing after Orbax gave up on its checkpoint (a damaged one: the failure
  itself reaches the script, and is said once)."""

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    default(unraisable)

  return hook


def _exit_now(message: str, status: int):
  """Prints ``message`` and exits at once: threads still writing (an abandoned
  checkpoint save) are not waited for, as a normal exit would."""
  print(message, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def _late_interrupt(signum, frame):
  _exit_now("interrupted while exiting; the work had finished and is kept", 130)


def run(main) -> None:
  """``absl.app.run`` with user errors reported in one line and exit status 2 (a
  full disk too), and Ctrl-C in one line with exit status 130."""

  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    logging.get_absl_handler().addFilter(NoOrbaxErrors())
    sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
    try:
      out = main(argv)
    except UserError as e:
      # Exits at once: a read Orbax gave up on (a damaged checkpoint) must not print its
      # error while the interpreter shuts down, after the one line.
      _exit_now(f"error: {e}", 2)
    except Interrupted as e:
      _exit_now(str(e), 130)
    except KeyboardInterrupt:
      _exit_now("interrupted", 130)
    except OSError as e:
      if not disk_full(e):
        raise
      _exit_now(
        f"error: the disk is full ({e.filename or e}); free some space, then run the same command",
        2,
      )
    signal.signal(signal.SIGINT, _late_interrupt)  # Ctrl-C while the interpreter exits
    return out

  app.run(guarded, flags_parser=_parse_flags)
