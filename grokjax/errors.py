"""The one exception type for user mistakes: scripts print it on one line, exit 2."""


class UserError(ValueError):
  """Bad input (config, flag, workdir) that the user can fix; the message says how."""


class Interrupted(Exception):
  """Ctrl-C while training; the message says from where the same command resumes."""
