"""The metric log: an append-only stream of msgpack maps, one per evaluation point.

Each record is ``{"step": int, "<metric>": [one float per run], ...}`` in runs.json
order, readable with a plain ``msgpack.Unpacker``. A record torn by a crash (the
last one, cut short) is dropped by the reader and cut off before appending again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgpack


def _records(raw: bytes):
  """Complete records of a log and the byte offset where each one ends."""
  unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
  unpacker.feed(raw)
  out = []
  try:
    for record in unpacker:
      out.append((record, unpacker.tell()))
  except (
    msgpack.exceptions.ExtraData,
    msgpack.exceptions.FormatError,
    msgpack.exceptions.StackError,
    ValueError,
  ):
    pass  # a corrupt tail: keep what came before
  return out


def read_metrics(path) -> list[dict]:
  """Every complete record of a metric log (a missing file reads as empty)."""
  path = Path(path)
  if not path.exists():
    return []
  return [r for r, _ in _records(path.read_bytes()) if isinstance(r, dict) and "step" in r]


def truncate_metrics(path, max_step: int) -> list[dict]:
  """Cuts the log after the last record with step <= max_step (and any torn tail).

  Returns the records kept. Used on resume so no evaluation point is logged twice.
  """
  path = Path(path)
  if not path.exists():
    return []
  kept, end = [], 0
  for record, offset in _records(path.read_bytes()):
    if record.get("step", max_step + 1) > max_step:
      break
    kept.append(record)
    end = offset
  with open(path, "r+b") as f:
    f.truncate(end)
  return kept


class MetricWriter:
  """Appends records to a metric log, flushed and synced per record."""

  def __init__(self, path):
    self._file = open(path, "ab")

  def write(self, record: dict) -> None:
    self._file.write(msgpack.packb(record, use_bin_type=True))
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_json_atomic(path, obj) -> None:
  """Writes JSON to a temporary file, then renames it over ``path``."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
  os.replace(tmp, path)
