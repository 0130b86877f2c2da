"""The metric log: an append-only stream of msgpack maps, one per evaluation point.

Each record is ``{"step": int, "<metric>": [one float per run], ...}`` in runs.json
order, and ``"crc32"``: the CRC-32 of the record packed without it (readers here
check and drop it). The checksum is the log's format: once a record has one, every
later record must (a log begun before checksums, format 1, may be resumed in format
2; a checksummed log never goes back), so a record that lost its checksum is damaged.
Readable with a plain ``msgpack.Unpacker``. A record torn by a crash (the last one,
cut short) is dropped by the reader and cut off before appending again;
a record damaged in the middle (a bad byte) is skipped and reported, and the reader
goes on at the next record, found by its header (a map whose first key is "step").
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

import msgpack

CRC = "crc32"  # the last key of a record: CRC-32 of the record packed without it
_STEP_KEY = msgpack.packb("step")  # every record is a map whose first key is "step"
log = logging.getLogger(__name__)


def _valid(record, width: int | None, checksummed: bool) -> bool:
  """A metric record: {"step": int, name: [float] * K, ...}, K = ``width`` if known,
  whose checksum (``crc32``, popped here) holds; without one only while the log has
  had none (``checksummed``: an earlier record had one)."""
  if not isinstance(record, dict) or type(record.get("step")) is not int:
    return False
  crc = record.pop(CRC, None)
  if crc is None and checksummed:
    return False
  if crc is not None and crc != zlib.crc32(msgpack.packb(record, use_bin_type=True)):
    return False
  lists = [v for k, v in record.items() if k != "step"]
  if not all(isinstance(v, list) for v in lists):
    return False
  lengths = {len(v) for v in lists}
  return len(lengths) <= 1 and (width is None or lengths <= {width})


def _decode(raw: bytes, pos: int):
  """(record, end) of the msgpack object at ``pos``; None if there is none."""
  unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
  unpacker.feed(raw[pos:])
  try:
    return unpacker.unpack(), pos + unpacker.tell()
  except Exception:  # OutOfData, FormatError, ExtraData, unhashable keys, ...
    return None


def _next_start(raw: bytes, after: int) -> int | None:
  """The first offset > ``after`` where a record's header could begin: a map
  header (fixmap: 1 byte, map16: 3 bytes) followed by the key "step"."""
  at = raw.find(_STEP_KEY, after + 1)
  while at != -1:
    for start in (at - 1, at - 3):
      if start > after and raw[start] in (0xDE, *range(0x81, 0x90)):
        return start
    at = raw.find(_STEP_KEY, at + 1)
  return None


def scan(raw: bytes) -> tuple[list[tuple[dict, int, int]], list[tuple[int, int]]]:
  """The records of a log with their (start, end) byte offsets, and the damaged
  byte ranges between them. A damaged record costs that record only: the reader
  resynchronises on the next record's header. A torn tail (a record cut short by
  a crash) is the last damaged range, reaching the end."""
  records, damaged, pos, width, checksummed = [], [], 0, None, False
  while pos < len(raw):
    got = _decode(raw, pos)
    has_crc = got is not None and isinstance(got[0], dict) and CRC in got[0]
    if got is not None and _valid(got[0], width, checksummed):
      record, end = got
      checksummed = checksummed or has_crc
      width = width or next((len(v) for k, v in record.items() if k != "step"), None)
      records.append((record, pos, end))
      pos = end
      continue
    nxt = _next_start(raw, pos)
    damaged.append((pos, len(raw) if nxt is None else nxt))
    if nxt is None:
      break
    pos = nxt
  return records, damaged


def _report(path, raw: bytes, damaged) -> None:
  middle = [(a, b) for a, b in damaged if b < len(raw)]
  if middle:
    where = ", ".join(f"{a}-{b}" for a, b in middle)
    log.warning(
      "%s: skipped %d damaged byte range(s) (offsets %s); the records around them are intact",
      path,
      len(middle),
      where,
    )


def read_metrics(path) -> list[dict]:
  """Every intact record of a metric log (a missing file reads as empty); damaged
  records in the middle are skipped and reported in one warning, a torn tail is
  dropped silently."""
  path = Path(path)
  if not path.exists():
    return []
  raw = path.read_bytes()
  records, damaged = scan(raw)
  _report(path, raw, damaged)
  return [r for r, _, _ in records]


def truncate_metrics(path, max_step: int) -> list[dict]:
  """Cuts the log before its first record with step > max_step, and any torn tail;
  everything before stays as it is (a damaged record in the middle is skipped by
  every reader, never a reason to cut). Returns the records kept. Used on resume
  so no evaluation point is logged twice."""
  path = Path(path)
  if not path.exists():
    return []
  raw = path.read_bytes()
  records, damaged = scan(raw)
  _report(path, raw, damaged)
  kept, end = [], 0
  for record, _, stop in records:
    if record["step"] > max_step:
      break
    kept.append(record)
    end = stop
  if end < len(raw):
    with open(path, "r+b") as f:
      f.truncate(end)
  return kept


class MetricWriter:
  """Appends records to a metric log, flushed and synced per record."""

  def __init__(self, path):
    self._file = open(path, "ab")

  def write(self, record: dict) -> None:
    crc = zlib.crc32(msgpack.packb(record, use_bin_type=True))
    self._file.write(msgpack.packb({**record, CRC: crc}, use_bin_type=True))
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
