import csv
import json
from pathlib import Path

import pytest
from conftest import run_script
from test_analysis import STEPS, make_run_dir

from grokjax import analysis, logs, rundir

ROOT = Path(__file__).resolve().parent.parent
RUN_FIELDS = ["index", "op", "p", "train_frac", "lr", "weight_decay", "split_seed", "seed"]
METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "param_norm"]


@pytest.fixture
def run_dir(tmp_path):
  return make_run_dir(tmp_path / "sweep")


def test_csv_one_row_per_run_per_eval(run_dir):
  out = analysis.export(rundir.load(run_dir), "csv")
  assert out == run_dir / "metrics.csv"
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == [*RUN_FIELDS, *analysis.RUN_RESULTS, "step", *METRICS]
  assert len(rows) == 6 * len(STEPS)
  records = logs.read_metrics(run_dir / "metrics.msgpack")
  for row in rows:
    k, t = int(row["index"]), STEPS.index(int(row["step"]))
    for m in METRICS:
      assert float(row[m]) == records[t][m][k]
  assert {(r["train_frac"], r["seed"]) for r in rows} == {
    (f, s) for f in ("0.3", "0.5", "0.7") for s in ("0", "1")
  }


def test_jsonl_with_null_for_non_finite(run_dir):
  records = logs.read_metrics(run_dir / "metrics.msgpack")
  records[2]["val_loss"][1] = float("inf")
  (run_dir / "metrics.msgpack").unlink()
  with logs.MetricWriter(run_dir / "metrics.msgpack") as w:
    for r in records:
      w.write(r)
  out = analysis.export(rundir.load(run_dir), "jsonl", run_dir / "h.jsonl")
  lines = out.read_text().splitlines()
  assert len(lines) == 6 * len(STEPS)
  rows = [json.loads(line) for line in lines]  # strict JSON: no NaN/Infinity tokens
  row = rows[len(STEPS) + 2]
  assert (row["index"], row["step"], row["val_loss"]) == (1, STEPS[2], None)
  results = analysis.summary(rundir.load(run_dir))[0]
  assert rows[0] == {
    **json.loads((run_dir / "runs.json").read_text())[0],
    **{f: results[f] for f in analysis.RUN_RESULTS},
    "step": 0,
    **{m: records[0][m][0] for m in METRICS},
  }


def test_export_cli(run_dir, tmp_path):
  out = run_script("export", run_dir, "--format", "jsonl")
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == str(run_dir / "metrics.jsonl")
  assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 6 * len(STEPS)
  out = run_script("export", run_dir, "--out", tmp_path / "table.csv")  # csv by default
  assert out.returncode == 0, out.stderr
  assert (
    (tmp_path / "table.csv")
    .read_text()
    .startswith(",".join([*RUN_FIELDS, *analysis.RUN_RESULTS, "step"]))
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["{run}", "--format", "xml"], "value should be one of <csv|jsonl>"),
    (["{tmp}/missing", "--format", "csv"], "does not exist"),
    (["{tmp}", "--format", "csv"], "not a grokjax run directory"),
    (["{run}", "--out", "{tmp}/no/such/dir/m.csv"], "directory"),
    (["{run}", "--out", "{tmp}"], "is a directory"),
    ([], "give exactly one run directory"),
  ],
)
def test_export_cli_user_errors(run_dir, tmp_path, args, message):
  out = run_script("export", *(a.format(run=run_dir, tmp=tmp_path) for a in args))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
  assert not (run_dir / "metrics.csv").exists()
