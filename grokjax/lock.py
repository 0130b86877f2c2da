"""One writer per run directory: an advisory lock (``fcntl.flock``) on RUN_DIR/.lock.

The kernel drops the lock when its process dies, however it dies (kill -9, a
crash), so a lock left behind by a dead process is simply taken over; the file
only says who holds it, for the message a second process gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from grokjax.errors import UserError

NAME = ".lock"


def _holder(path: Path) -> str:
  try:
    info = json.loads(path.read_text())
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
    return f"process {info['pid']} on {info['host']} (since {since}: {info['command']})"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


@contextlib.contextmanager
def hold(workdir, wait: bool = False):
  """Holds the run directory ``workdir`` (created if missing) for this process; a
  UserError naming the holder when another process has it, unless ``wait``."""
  workdir = Path(workdir)
  path = workdir / NAME
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
  except OSError as e:
    raise UserError(
      f"cannot create the run directory {workdir} ({e.strerror or e}); choose another --workdir"
    ) from None
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      os.close(fd)
      raise UserError(
        f"run directory {workdir} is in use by {_holder(path)}; wait for it to finish or "
        "stop it, or pass --wait to start when it is free"
      ) from None
    # Its last holder may have removed the file between our open and our lock.
    if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
      break
    os.close(fd)
  info = dict(pid=os.getpid(), host=socket.gethostname(), since=time.time(), command=sys.argv[0])
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(info).encode())
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      path.unlink()
    os.close(fd)
