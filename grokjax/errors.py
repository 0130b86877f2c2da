"""The one exception type for user mistakes: scripts print it on one line, exit 2."""

import errno


class UserError(ValueError):
  """Bad input (config, flag, workdir) that the user can fix; the message says how."""


class Interrupted(Exception):
  """Ctrl-C while training; the message says from where the same command resumes."""


def disk_full(e: BaseException) -> bool:
  """Whether ``e`` (or an exception it was raised from) says the disk is full: an
  OSError ENOSPC/EDQUOT, or TensorStore's message for one (Orbax's async saves)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(s in str(e) for s in ("No space left on device", "Disk quota exceeded")):
      return True
    e = e.__cause__ or e.__context__
  return False


def moved(module: str, names: dict[str, str]):
  """A module ``__getattr__`` that names the new home of each of ``names`` (old name ->
  new dotted name) in a one-line AttributeError, e.g. after a function moved."""

  def __getattr__(name: str):
    if name in names:
      raise AttributeError(f"{module}.{name} has moved: use {names[name]}")
    raise AttributeError(f"module {module!r} has no attribute {name!r}")

  return __getattr__
