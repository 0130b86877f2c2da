import msgpack

from grokjax import logs


def _write(path, records):
  with logs.MetricWriter(path) as w:
    for r in records:
      w.write(r)


RECORDS = [{"step": s, "val_acc": [0.1 * s, 0.5]} for s in range(0, 50, 10)]


def test_plain_msgpack_reads_the_log(tmp_path):
  path = tmp_path / "metrics.msgpack"
  _write(path, RECORDS)
  with open(path, "rb") as f:
    plain = list(msgpack.Unpacker(f))
  assert [{k: v for k, v in r.items() if k != "crc32"} for r in plain] == RECORDS
  assert all(isinstance(r["crc32"], int) for r in plain)
  assert logs.read_metrics(path) == RECORDS


def test_torn_last_record_is_dropped(tmp_path):
  path = tmp_path / "metrics.msgpack"
  _write(path, RECORDS)
  raw = path.read_bytes()
  for cut in (1, 5, 11):
    path.write_bytes(raw[:-cut])
    assert logs.read_metrics(path) == RECORDS[:-1]
  path.write_bytes(raw + b"\xc1\xc1")  # garbage (never-used byte) after the last record
  assert logs.read_metrics(path) == RECORDS


def test_truncate_then_append(tmp_path):
  path = tmp_path / "metrics.msgpack"
  _write(path, RECORDS)
  path.write_bytes(path.read_bytes()[:-3])  # a crash mid-write
  assert logs.truncate_metrics(path, 20) == RECORDS[:3]
  _write(path, RECORDS[3:])
  assert logs.read_metrics(path) == RECORDS
  assert logs.truncate_metrics(path, -1) == [] and path.read_bytes() == b""
  assert logs.read_metrics(tmp_path / "missing.msgpack") == []


def test_atomic_json(tmp_path):
  path = tmp_path / "a.json"
  logs.write_json_atomic(path, {"x": 1})
  logs.write_json_atomic(path, {"x": 2})
  assert path.read_text().strip().endswith("}") and '"x": 2' in path.read_text()
  assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_damaged_record_in_the_middle_costs_that_record_only(tmp_path, caplog):
  path = tmp_path / "metrics.msgpack"
  records = [{"step": s, "val_acc": [0.1 * s, 0.5], "val_loss": [1.0, 2.0]} for s in range(10)]
  _write(path, records)
  raw = path.read_bytes()
  ends = [o for _, _, o in logs.scan(raw)[0]]
  start, end = ends[3], ends[4]  # record 4
  for offset in range(start, end):
    for bad in (0xC1, raw[offset] ^ 0xFF):
      path.write_bytes(raw[:offset] + bytes([bad]) + raw[offset + 1 :])
      got = logs.read_metrics(path)
      others = [r for r in got if r["step"] != 4]
      assert others == records[:4] + records[5:], (offset, bad)
      assert len(got) in (9, 10)
  # reported in one line; a resume keeps every intact record, before and after it
  path.write_bytes(raw[:start] + b"\xc1" + raw[start + 1 :])
  caplog.clear()
  with caplog.at_level("WARNING"):
    assert logs.read_metrics(path) == records[:4] + records[5:]
  assert [r.getMessage().count("\n") for r in caplog.records] == [0]
  assert "damaged" in caplog.records[0].getMessage()
  assert logs.truncate_metrics(path, 7) == records[:4] + records[5:8]
  assert logs.read_metrics(path) == records[:4] + records[5:8]


def test_a_log_begun_without_checksums_reads_and_a_checksummed_one_stays_so(tmp_path):
  """Format 1 (no checksums) reads whole and may go on in format 2; once a record has a
  checksum, a later record without one is damaged (it lost its checksum), not format 1."""
  path = tmp_path / "metrics.msgpack"
  old = b"".join(msgpack.packb(r) for r in RECORDS[:2])
  path.write_bytes(old)
  assert logs.read_metrics(path) == RECORDS[:2]
  _write(path, RECORDS[2:4])  # resumed by this version: checksummed from here on
  path.write_bytes(path.read_bytes() + msgpack.packb(RECORDS[4]))  # no checksum after one
  assert logs.read_metrics(path) == RECORDS[:4]
