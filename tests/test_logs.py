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
    assert list(msgpack.Unpacker(f)) == RECORDS
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
