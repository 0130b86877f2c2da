import json
import math

import numpy as np
import pytest

from grokjax import analysis, logs, rundir
from grokjax.errors import UserError

STEPS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
# val accuracy reaches 0.99 at this step (None: never) per (train_frac, seed)
VAL_AT = {
  (0.3, 0): None,
  (0.3, 1): None,
  (0.5, 0): 500,
  (0.5, 1): None,
  (0.7, 0): 100,
  (0.7, 1): 200,
}
TRAIN_AT = 20  # every run fits its training set at step 20


def curve(at, steps=STEPS, plateau=0.5):
  """Accuracy per step: ``plateau`` until step ``at``, 1.0 from then on."""
  return [1.0 if at is not None and s >= at else plateau * s / max(steps[-1], 1) for s in steps]


def make_run_dir(path, val_at=VAL_AT, ops=("add",), extra=None, steps=STEPS):
  """A synthetic finished sweep: runs.json, config.json, metrics.msgpack."""
  path.mkdir(parents=True, exist_ok=True)
  runs = [
    dict(index=i, op=op, p=7, train_frac=f, lr=1e-3, weight_decay=1.0, split_seed=s, seed=s)
    for i, (op, (f, s)) in enumerate((op, key) for op in ops for key in val_at)
  ]
  for r in runs:
    r.update(extra or {})
  config = dict(op=ops[0], p=7, steps=steps[-1], threshold=0.99, optim=dict(b1=0.9, b2=0.98))
  (path / "config.json").write_text(json.dumps(config))
  (path / "runs.json").write_text(json.dumps(runs))
  val = np.array([curve(val_at[r["train_frac"], r["seed"]], steps) for r in runs]).T
  train = np.array([curve(TRAIN_AT, steps) for _ in runs]).T
  with logs.MetricWriter(path / "metrics.msgpack") as w:
    for t, step in enumerate(steps):
      w.write(
        {
          "step": step,
          "train_loss": list(1.0 - train[t] + 1e-3),
          "train_acc": list(train[t]),
          "val_loss": list(1.0 - val[t] + 1e-3),
          "val_acc": list(val[t]),
          "param_norm": [50.0 - step / 100 + k for k in range(len(runs))],
        }
      )
  return path


@pytest.fixture
def run_dir(tmp_path):
  return make_run_dir(tmp_path / "sweep")


def test_first_step_any_threshold():
  steps = np.array([0, 10, 20, 30])
  values_TxK = np.array([[0.1, 0.0], [0.6, 0.2], [0.995, 0.4], [0.9, 0.5]])
  assert analysis.first_step(steps, values_TxK, 0.99) == [20, None]
  assert analysis.first_step(steps, values_TxK, 0.5) == [10, 30]
  assert analysis.first_step(steps, values_TxK, 0.0) == [0, 0]


def test_load_run_dir(run_dir):
  rd = rundir.load(run_dir)
  assert rd.path == run_dir and rd.threshold == 0.99
  assert [r["index"] for r in rd.runs] == list(range(6))
  assert rd.metrics["step"].tolist() == STEPS
  assert rd.metrics["val_acc"].shape == (len(STEPS), 6)
  assert rd.metrics["val_acc"][-1].tolist() == [0.5, 0.5, 1.0, 0.5, 1.0, 1.0]


def test_load_skips_a_torn_tail(run_dir):
  raw = (run_dir / "metrics.msgpack").read_bytes()
  (run_dir / "metrics.msgpack").write_bytes(raw[:-7])
  assert rundir.load(run_dir).metrics["step"].tolist() == STEPS[:-1]


def _drop_runs_json(d):
  (d / "runs.json").unlink()
  return d


def _break_config(d):
  (d / "config.json").write_text("{")
  return d


def _fewer_runs(d):
  runs = json.loads((d / "runs.json").read_text())
  (d / "runs.json").write_text(json.dumps(runs[:4]))
  return d


@pytest.mark.parametrize(
  "breakage, message",
  [
    (lambda d: d / "nope", "does not exist"),
    (_drop_runs_json, r"not a grokjax run directory \(no runs.json\)"),
    (_break_config, "unreadable config.json"),
    (_fewer_runs, "holds 6 runs per record but runs.json lists 4"),
  ],
)
def test_load_refuses_what_is_not_a_sweep(run_dir, breakage, message):
  with pytest.raises(UserError, match=message):
    rundir.load(breakage(run_dir))


def test_no_metrics_yet(run_dir):
  (run_dir / "metrics.msgpack").unlink()
  rd = rundir.load(run_dir)
  assert rd.metrics == {} and analysis.tidy_rows(rd) == []
  with pytest.raises(UserError, match="no metric records yet"):
    analysis.require_metrics(rd)


def test_summarize_steps_delay_final(run_dir):
  rd = rundir.load(run_dir)
  summary = analysis.summarize_arrays(rd.metrics, rd.runs, 0.99)
  assert [s["train_step"] for s in summary] == [20] * 6
  assert [s["val_step"] for s in summary] == [None, None, 500, None, 100, 200]
  assert [s["delay"] for s in summary] == [None, None, 480, None, 80, 180]
  # stable: the median over the last 10% of the steps (900..1000: the last evaluation)
  assert [s["final_val_acc"] for s in summary] == [0.5, 0.5, 1.0, 0.5, 1.0, 1.0]
  assert [s["last_val_acc"] for s in summary] == [0.5, 0.5, 1.0, 0.5, 1.0, 1.0]
  assert [s["spikes"] for s in summary] == [0] * 6
  assert [s["spike_frac"] for s in summary] == [None, None, 0.0, None, 0.0, 0.0]
  assert not any(s["relapsed"] for s in summary)
  assert not any(s["diverged"] for s in summary)
  # at Liu et al.'s 90% and a delay of 10% of the 1,000 steps
  phases = ["memorization"] * 2 + ["grokking", "memorization", "comprehension", "grokking"]
  assert [s["phase"] for s in summary] == phases
  assert [s["phase_budget"] for s in summary] == [1000] * 6
  # another threshold: the plateau's 0.25 is reached at step 500 by every run
  low = analysis.summarize_arrays(rd.metrics, rd.runs, 0.25)
  assert [s["val_step"] for s in low] == [500, 500, 500, 500, 100, 200]
  # the record-list entry point agrees
  records = logs.read_metrics(run_dir / "metrics.msgpack")
  assert analysis.summarize(records, rd.runs, 0.99) == summary


def test_diverged_run_is_flagged(tmp_path):
  path = make_run_dir(tmp_path / "d")
  records = logs.read_metrics(path / "metrics.msgpack")
  records[-1]["train_loss"][1] = math.nan
  summary = analysis.summarize(records, json.loads((path / "runs.json").read_text()))
  assert [s["diverged"] for s in summary] == [False, True, False, False, False, False]


@pytest.mark.parametrize(
  "values, median, lo, hi, reached",
  [
    ([100, 200], 150, 100, 200, 2),
    ([100, None], None, 100, 100, 1),  # half never: the median is beyond the budget
    ([300, 100, None], 300, 100, 300, 2),
    ([None, None], None, None, None, 0),
    ([0.5, 0.75, 1.0], 0.75, 0.5, 1.0, 3),
  ],
)
def test_spread_counts_never_as_beyond_the_budget(values, median, lo, hi, reached):
  s = analysis.spread(values)
  assert (s["median"], s["min"], s["max"], s["reached"], s["n"]) == (
    median,
    lo,
    hi,
    reached,
    len(values),
  )


def test_group_runs_over_seeds_only():
  runs = [
    dict(index=i, op="add", train_frac=f, lr=lr, seed=s, split_seed=s)
    for i, (f, lr, s) in enumerate(
      (f, lr, s) for f in (0.3, 0.5) for lr in (1e-3, 3e-3) for s in (0, 1, 2)
    )
  ]
  groups = analysis.group_runs(runs)
  assert [g for g, _ in groups] == [
    dict(op="add", train_frac=f, lr=lr) for f in (0.3, 0.5) for lr in (1e-3, 3e-3)
  ]
  assert [idx for _, idx in groups] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
  by_lr = analysis.group_runs(runs, analysis.SEED_FIELDS + ("train_frac",))
  assert [idx for _, idx in by_lr] == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]
  assert analysis.varying([g for g, _ in groups]) == ["train_frac", "lr"]


def test_group_summary_medians_over_seeds(run_dir):
  rd = rundir.load(run_dir)
  groups = analysis.group_summary(analysis.summarize_arrays(rd.metrics, rd.runs), rd.runs)
  assert [g["setting"]["train_frac"] for g in groups] == [0.3, 0.5, 0.7]
  assert [g["runs"] for g in groups] == [[0, 1], [2, 3], [4, 5]]
  val = [g["val_step"] for g in groups]
  assert [v["median"] for v in val] == [None, None, 150]
  assert [(v["min"], v["max"], v["reached"]) for v in val] == [
    (None, None, 0),
    (500, 500, 1),
    (100, 200, 2),
  ]
  assert groups[2]["delay"]["median"] == 130
  assert groups[0]["final_val_acc"]["median"] == 0.5
  assert [(g["phase"], g["phase_agree"]) for g in groups] == [
    ("memorization", 1.0),
    ("grokking", 0.5),  # a tie: the phase earlier in PHASES
    ("comprehension", 0.5),
  ]


def test_table_lists_runs_then_settings(run_dir):
  rd = rundir.load(run_dir)
  text = analysis.table(
    analysis.summarize_arrays(rd.metrics, rd.runs), rd.runs, ["train_frac", "seed"]
  )
  lines = text.splitlines()
  assert lines[0].split() == [
    "run",
    "train_frac",
    "seed",
    "train>=thr",
    "val>=thr",
    "delay",
    "train_acc",
    "val_acc",
    "last_val",
    "spikes",
    "relapsed",
    "phase",
  ]
  assert lines[3].split() == [
    "2",
    "0.5",
    "0",
    "20",
    "500",
    "480",
    "1.000",
    "1.000",
    "1.000",
    "0",
    "no",
    "grokking",
  ]
  assert lines[1].split()[-5:] == ["0.500", "0.500", "0", "no", "memorization"]
  assert "median (min-max) over seeds" in text
  assert lines[-1].split() == [
    "0.7",
    "2",
    "20",
    "(20-20)",
    "150",
    "(100-200)",
    "130",
    "(80-180)",
    "1.000",
    "(1.000-1.000)",
    "1.000",
    "(1.000-1.000)",
    "1.000",
    "(1.000-1.000)",
    "0",
    "(0-0)",
    "0/2",
    "comprehension",
    "(50%)",
  ]
  assert lines[-2].split()[-2:] == ["grokking", "(50%)"]
  assert lines[-2].split()[:6] == ["0.5", "2", "20", "(20-20)", "never", "(500-never)"]


def test_tidy_rows(run_dir):
  rd = rundir.load(run_dir)
  rows = analysis.tidy_rows(rd)
  assert len(rows) == 6 * len(STEPS)
  row = rows[len(STEPS) + 3]  # run 1, fourth evaluation
  assert row["index"] == 1 and row["seed"] == 1 and row["train_frac"] == 0.3
  assert row["step"] == STEPS[3] and row["val_acc"] == rd.metrics["val_acc"][3, 1]
  assert row["phase"] == "memorization" and row["phase_val_step"] is None
  assert list(row) == [
    *rd.runs[1],
    *analysis.RUN_RESULTS,
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "param_norm",
  ]


# Phases and stability on synthetic curves: steps 0..1000 every 50 (21 evaluations).
GRID = np.arange(0, 1001, 50)


def _summary(train, val, loss=None):
  """The summary of one synthetic run from its train and val accuracy curves."""
  train, val = np.asarray(train, float), np.asarray(val, float)
  metrics = dict(
    step=GRID[: len(train)],
    train_acc=train[:, None],
    val_acc=val[:, None],
    train_loss=(1.0 - train if loss is None else np.asarray(loss, float))[:, None],
  )
  return analysis.summarize_arrays(metrics, [dict(index=0)], 0.99)[0]


def step_curve(at, low=0.1):
  """Accuracy ``low`` until evaluation ``at`` (None: never), 1.0 from then on."""
  return [1.0 if at is not None and t >= at else low for t in range(len(GRID))]


@pytest.mark.parametrize(
  "train_at, val_at, expected",
  [
    (1, 2, "comprehension"),  # val 50 steps after train: 5% of the budget
    (1, 3, "comprehension"),  # 100 steps: exactly the 10% limit still counts
    (1, 4, "grokking"),  # 150 steps: beyond it
    (1, 20, "grokking"),  # reaches it at the very last evaluation
    (1, None, "memorization"),
    (None, None, "confusion"),
  ],
)
def test_phase_of_each_kind(train_at, val_at, expected):
  s = _summary(step_curve(train_at), step_curve(val_at))
  assert s["phase"] == expected and not s["relapsed"]  # at the last evaluation: not relapsed
  assert (s["phase_train_step"], s["phase_val_step"], s["phase_budget"]) == (
    None if train_at is None else GRID[train_at],
    None if val_at is None else GRID[val_at],
    1000,
  )


def test_phase_rule_from_config_and_threshold_edge():
  train, val = step_curve(1), [0.1] * 10 + [0.95] * 11  # val stops at 95%
  s = _summary(train, val)
  assert s["phase"] == "grokking" and s["val_step"] is None  # 90% for the phase, 99% for steps
  rule = analysis.PhaseRule.of({"phase": {"threshold": 0.96, "delay": 0.1}})
  metrics = dict(
    step=GRID,
    train_acc=np.asarray(train)[:, None],
    val_acc=np.asarray(val)[:, None],
    train_loss=np.zeros((len(GRID), 1)),
  )
  assert analysis.summarize_arrays(metrics, [dict(index=0)], 0.99, rule)[0]["phase"] == (
    "memorization"  # never evaluated at or past 96%
  )
  assert analysis.PhaseRule.of({}) == analysis.PhaseRule(0.9, 0.1)  # an older config.json
  wide = analysis.PhaseRule(delay=0.5)
  assert analysis.summarize_arrays(metrics, [dict(index=0)], 0.99, wide)[0]["phase"] == (
    "comprehension"  # val 450 steps after train: under half the budget
  )


def test_diverged_run_is_its_own_phase():
  loss = [1.0] * 10 + [float("nan")] * 11
  val = [0.1] * 5 + [1.0] * 5 + [float("nan")] * 11  # grokked, then diverged
  s = _summary(step_curve(1)[:10] + [float("nan")] * 11, val, loss)
  assert s["phase"] == "diverged" and s["diverged"]
  assert s["val_step"] == 250 and s["spike_frac"] == pytest.approx(11 / 15)
  assert s["spikes"] == 1 and s["relapsed"]  # it fell for good: one drop, never recovered
  assert math.isnan(s["last_val_acc"]) and math.isnan(s["final_val_acc"])


def test_spiky_run_is_grokked_with_its_spikes_counted():
  val = [0.1] * 4 + [1.0, 1.0, 0.3, 1.0, 0.98, 0.97, 1.0, 1.0, 1.0, 0.5] + [1.0] * 7
  s = _summary(step_curve(1), val)
  assert s["phase"] == "grokking" and s["val_step"] == 200  # the first time it got there
  assert s["spikes"] == 3  # 0.3, (0.98, 0.97) and 0.5: each recovered
  assert s["spike_frac"] == pytest.approx(4 / 16)
  assert s["final_val_acc"] == 1.0 and s["last_val_acc"] == 1.0 and not s["relapsed"]
  # ends in a drop: a spike too, though it has not recovered
  s = _summary(step_curve(1), val[:-7] + [1.0] * 6 + [0.2])
  assert s["spikes"] == 4 and s["spike_frac"] == pytest.approx(5 / 16)
  assert s["last_val_acc"] == 0.2 and s["final_val_acc"] == 1.0  # median of steps 900..1000
  assert not s["relapsed"] and s["phase"] == "grokking"


# The quick demo's log schedule (configs/quick.py: 3,000 steps, 100 log-spaced points).
DEMO_STEPS = np.asarray(sorted({0, 3000, *np.geomspace(1, 3000, 100).round().astype(int)}))


def _demo_summary(val_tail):
  """A demo run that fits its training set at step 57 and whose val accuracy is 0.1
  until step 2,002, then ``val_tail`` at 2002, 2171, 2354, 2552, 2767, 3000."""
  val = np.full(len(DEMO_STEPS), 0.1)
  val[-len(val_tail) :] = val_tail
  train = np.where(DEMO_STEPS >= 57, 1.0, 0.1)
  metrics = dict(
    step=DEMO_STEPS,
    train_acc=train[:, None],
    val_acc=val[:, None],
    train_loss=(1 - train)[:, None],
  )
  return analysis.summarize_arrays(metrics, [dict(index=0)], 0.99)[0]


def test_a_run_that_collapsed_after_grokking_is_reported_as_relapsed():
  # issue 20: the demo's seed 2 reached 0.995 at step 2,002, then 1.0, 1.0, 1.0, 0.951,
  # and ended at 0.820; the table said 0 spikes, stable 0.974, phase grokking
  assert DEMO_STEPS[-6:].tolist() == [2002, 2171, 2354, 2552, 2767, 3000]
  s = _demo_summary([0.995, 1.0, 1.0, 1.0, 0.951, 0.820])
  assert s["val_step"] == 2002 and s["train_step"] == 57
  assert s["spikes"] >= 1 and s["spike_frac"] == pytest.approx(2 / 5)
  # the last 10% of the steps (2,700..3,000) hold two evaluations, not half the run
  assert s["final_val_acc"] == pytest.approx((0.951 + 0.820) / 2) and s["last_val_acc"] == 0.82
  assert s["relapsed"] and s["phase"] == "grokking (relapsed)"
  assert analysis.base_phase(s["phase"]) == "grokking"
  text = analysis.table([s], [dict(index=0, seed=2)], ["seed"])
  row = text.splitlines()[1].split()
  assert row[-8:] == ["1.000", "0.885", "0.820", "1", "(40%)", "yes", "grokking", "(relapsed)"]
  # a drop that recovered: a spike, not a relapse
  s = _demo_summary([0.995, 1.0, 0.5, 1.0, 1.0, 1.0])
  assert s["spikes"] == 1 and not s["relapsed"] and s["phase"] == "grokking"
  # ended below 99% (stable 0.976) but above the phase rule's 90%: relapsed at 99% only
  s = _demo_summary([0.995, 1.0, 1.0, 1.0, 0.951, 1.0])
  assert s["spikes"] == 1 and s["relapsed"] and s["phase"] == "grokking"


def test_relapsed_seeds_keep_their_phase_in_the_majority():
  assert analysis.majority(["grokking (relapsed)", "grokking", "comprehension"]) == (
    "grokking",
    pytest.approx(2 / 3),
  )


LRS, WDS = [1e-4, 1e-3, 1e-2], [0.01, 0.1, 1.0]


def make_grid_dir(path, steps=GRID):
  """A synthetic lr x weight-decay sweep, 2 seeds: the smallest lr never fits
  (confusion), weight decay 0.01 never generalises (memorization), 0.1 groks late,
  1.0 at once (comprehension) but for seed 1 at lr 1e-3 (late: the seeds disagree)."""
  path.mkdir(parents=True, exist_ok=True)
  runs = [
    dict(index=i, op="add", p=7, train_frac=0.5, lr=lr, weight_decay=wd, split_seed=s, seed=s)
    for i, (lr, wd, s) in enumerate((a, b, c) for a in LRS for b in WDS for c in (0, 1))
  ]
  (path / "config.json").write_text(json.dumps(dict(op="add", p=7, steps=int(steps[-1]))))
  (path / "runs.json").write_text(json.dumps(runs))
  train_at, val_at = [], []
  for r in runs:
    t = None if r["lr"] == 1e-4 else 100
    late = r["weight_decay"] == 0.1 or (r["lr"], r["seed"]) == (1e-3, 1)
    v = None if t is None or r["weight_decay"] == 0.01 else (700 if late else 150)
    train_at.append(t)
    val_at.append(v)
  acc = lambda at: [1.0 if at is not None and s >= at else 0.1 for s in steps]
  with logs.MetricWriter(path / "metrics.msgpack") as w:
    for i, step in enumerate(steps):
      tr = [acc(a)[i] for a in train_at]
      va = [acc(a)[i] for a in val_at]
      w.write(
        dict(
          step=int(step),
          train_loss=[1 - x for x in tr],
          train_acc=tr,
          val_loss=[1 - x for x in va],
          val_acc=va,
          param_norm=[1.0] * len(runs),
        )
      )
  return path


def test_phase_grid_over_two_axes(tmp_path):
  rd = rundir.load(make_grid_dir(tmp_path / "grid"))
  assert analysis.grid_axes(rd.runs) == ("lr", "weight_decay")
  g = analysis.phase_grid(analysis.summary(rd), rd.runs, "lr", "weight_decay")
  assert g["xs"] == LRS and g["ys"] == WDS and g["seeds"].tolist() == [[2] * 3] * 3
  names = [[analysis.PHASES[i] for i in row] for row in g["phase"]]
  assert names == [  # rows: weight decay 0.01, 0.1, 1.0; columns: lr
    ["confusion", "memorization", "memorization"],
    ["confusion", "grokking", "grokking"],
    ["confusion", "comprehension", "comprehension"],
  ]
  assert g["agree"][2].tolist() == [1.0, 0.5, 1.0]  # seed 1 at lr 1e-3 grokked instead
  assert g["val_step"][1].tolist()[1:] == [700, 700] and np.isnan(g["val_step"][0]).all()
  assert g["delay"][2].tolist()[1:] == [(50 + 600) / 2, 50]
  assert not g["relapsed"].any()
  # a seed that relapsed keeps its cell's phase and is counted
  summary = analysis.summary(rd)
  k = next(
    i for i, r in enumerate(rd.runs) if (r["lr"], r["weight_decay"], r["seed"]) == (1e-2, 0.1, 0)
  )
  assert summary[k]["phase"] == "grokking"
  summary[k]["phase"] += analysis.RELAPSED
  relapsed = analysis.phase_grid(summary, rd.runs, "lr", "weight_decay")
  assert (relapsed["phase"] == g["phase"]).all() and relapsed["agree"][1, 2] == 1.0
  assert relapsed["relapsed"].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
  # not a grid: one axis, or three
  assert analysis.grid_axes([{**r, "weight_decay": 1.0} for r in rd.runs]) is None
  assert analysis.grid_axes([{**r, "b1": 0.9 + r["index"]} for r in rd.runs]) is None
