import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_script
from test_analysis import LRS, WDS, make_grid_dir, make_run_dir

from grokjax import logs, plots, rundir
from grokjax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rd(tmp_path):
  return rundir.load(make_run_dir(tmp_path / "sweep"))


def lines_of(ax, min_width=0.0):
  return [line for line in ax.get_lines() if line.get_linewidth() >= min_width]


@pytest.mark.slow
def test_write_figures_into_run_dir(tmp_path):
  run_dir = make_run_dir(tmp_path / "sweep")
  paths = plots.write_figures(rundir.load(run_dir))
  assert [p.name for p in paths] == ["curves.png", "steps_to_threshold.png", "weight_norm.png"]
  for p in paths:
    assert p.parent == run_dir / "figures"
    data = p.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
  out = plots.write_figures(rundir.load(run_dir), tmp_path / "elsewhere", threshold=0.5)
  assert all(p.parent == tmp_path / "elsewhere" and p.stat().st_size > 10_000 for p in out)


def test_curves_one_column_per_setting(rd):
  fig = plots.curves(rd)
  assert len(fig.axes) == 2 * 3  # accuracy and loss rows, one column per train fraction
  acc, loss = fig.axes[:3], fig.axes[3:]
  assert [ax.get_title() for ax in acc] == [f"{f}% training data" for f in (30, 50, 70)]
  assert all(ax.get_xscale() == "log" for ax in fig.axes)
  assert [ax.get_yscale() for ax in loss] == ["log"] * 3
  assert acc[0].get_ylabel() == "accuracy (%)" and loss[0].get_xlabel() == "optimisation steps"
  assert (
    "x + y (mod 7)" in fig._suptitle.get_text() and "AdamW lr 0.001" in fig._suptitle.get_text()
  )
  # 2 seeds thin + 1 median bold, for train and val, and the threshold line
  assert len(acc[1].get_lines()) == 2 * 3 + 1
  bold = lines_of(acc[2], min_width=2)
  assert len(bold) == 2
  val_median = bold[1].get_ydata()
  assert np.allclose(val_median, 100 * np.median(rd.metrics["val_acc"][1:, 4:6], axis=1))
  for ax in fig.axes:  # step 0 is left out: a log axis cannot show it
    curves = [line for line in ax.get_lines() if line.get_linestyle() != ":"]
    assert curves and all(min(line.get_xdata()) >= 1 for line in curves)


def test_curves_mark_spikes_apart_from_never_grokked(tmp_path):
  run_dir = make_run_dir(tmp_path / "sweep")
  rd = rundir.load(run_dir)
  assert not any(
    line.get_marker() == "v" for ax in plots.curves(rd).axes for line in ax.get_lines()
  )
  records = logs.read_metrics(run_dir / "metrics.msgpack")
  records[-2]["val_acc"][4] = 0.4  # run 4 (70%, seed 0) grokked at step 100, drops at 500
  (run_dir / "metrics.msgpack").unlink()
  with logs.MetricWriter(run_dir / "metrics.msgpack") as w:
    for r in records:
      w.write(r)
  fig = plots.curves(rundir.load(run_dir))
  marks = [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "v"]
  assert len(marks) == 1 and list(marks[0].get_xdata()) == [500]
  assert list(marks[0].get_ydata()) == [40.0]
  assert fig.axes[2].get_title() == "70% training data\n1 spike"
  assert fig.axes[0].get_title() == "30% training data"  # never grokked: no marks, no count


def test_panels_wrap_after_five_columns(tmp_path):
  val_at = {(round(0.1 * i, 1), 0): 100 for i in range(1, 8)}
  rd = rundir.load(make_run_dir(tmp_path / "s", val_at=val_at))
  assert len(plots.curves(rd).axes) == 2 * 7
  assert len(plots.weight_norm(rd).axes) == 7


def test_steps_to_threshold_marks_runs_that_never_got_there(rd):
  fig = plots.steps_to_threshold(rd)
  (ax,) = fig.axes
  assert ax.get_yscale() == "log" and ax.get_xlabel() == "training data (% of all equations)"
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert labels == [
    "validation ≥ 99%",
    "train ≥ 99%",
    "not reached in 1,000 steps (seeds missed/seeds)",
  ]
  val = next(line for line in ax.get_lines() if line.get_label() == "validation ≥ 99%")
  assert val.get_xdata().tolist() == [30, 50, 70]
  y = val.get_ydata()
  assert np.isnan(y[0]) and np.isnan(y[1]) and y[2] == 150  # 0.5: one seed of two missed
  hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
  assert len(hollow) == 1 and hollow[0].get_xdata().tolist() == [30, 50]
  assert all(v > 1000 for v in hollow[0].get_ydata())  # on the 'not reached' line, above the budget
  notes = sorted(t.get_text() for t in ax.texts)
  assert notes == ["1/2", "2/2"]


def test_steps_to_threshold_other_threshold(rd):
  ax = plots.steps_to_threshold(rd, threshold=0.25).axes[0]
  val = next(line for line in ax.get_lines() if line.get_label() == "validation ≥ 25%")
  assert val.get_ydata().tolist() == [500, 500, 150]
  assert not [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]


def test_one_series_per_operation(tmp_path):
  rd = rundir.load(make_run_dir(tmp_path / "s", ops=("add", "sub")))
  fig = plots.steps_to_threshold(rd)
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert labels[:4] == [
    "x + y: validation ≥ 99%",
    "x + y: train ≥ 99%",
    "x − y: validation ≥ 99%",
    "x − y: train ≥ 99%",
  ]
  assert len(plots.curves(rd).axes) == 2 * 6  # op x train fraction panels


def test_weight_norm_panels(rd):
  fig = plots.weight_norm(rd)
  assert len(fig.axes) == 3 and fig.axes[0].get_ylabel() == "parameter norm (L2)"
  ax = fig.axes[2]  # 70%: both seeds reach train at 20 and val at 100/200
  vlines = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
  assert vlines == [20, 150]
  assert len(lines_of(fig.axes[0], min_width=2)) == 1  # median of the norm


def test_nothing_to_plot_yet(tmp_path):
  run_dir = make_run_dir(tmp_path / "s", steps=[0])
  with pytest.raises(UserError, match="step 0 only"):
    plots.write_figures(rundir.load(run_dir))
  (run_dir / "metrics.msgpack").unlink()
  with pytest.raises(UserError, match="no metric records yet"):
    plots.write_figures(rundir.load(run_dir))


def test_plot_cli(tmp_path):
  run_dir = make_run_dir(tmp_path / "sweep")
  out = run_script("plot", run_dir, "--threshold", "0.9", "--out", tmp_path / "figs")
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == [str(tmp_path / "figs" / f"{n}.png") for n in plots.FIGURES]
  assert all((tmp_path / "figs" / f"{n}.png").read_bytes().startswith(PNG) for n in plots.FIGURES)


@pytest.mark.parametrize(
  "args, message",
  [
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}"], "not a grokjax run directory"),
    ([], "give exactly one run directory"),
    (["{tmp}", "{tmp}"], "unexpected arguments"),
    (["{run}", "--threshold", "1.5"], "threshold 1.5 must be in (0, 1]"),
  ],
)
def test_plot_cli_user_errors(tmp_path, args, message):
  run = make_run_dir(tmp_path / "run")
  (tmp_path / "empty").mkdir()
  out = run_script("plot", *(a.format(tmp=tmp_path / "empty", run=run) for a in args))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr


def test_sweep_imports_no_matplotlib():
  code = "import sys, grokjax.sweep; assert 'matplotlib' not in sys.modules, 'eager import'"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr


def test_phase_diagram_of_a_two_axis_sweep(tmp_path):
  path = make_grid_dir(tmp_path / "grid")
  names = [p.name for p in plots.write_figures(rundir.load(path))]
  assert "phase.png" in names and (path / "figures" / "phase.png").stat().st_size > 10_000
  fig = plots.phase_diagram(rundir.load(path))
  phase_ax, steps_ax, delay_ax = fig.axes[:3]
  assert [ax.get_xscale() for ax in (phase_ax, steps_ax, delay_ax)] == ["log"] * 3
  assert phase_ax.get_xlabel() == "lr" and phase_ax.get_ylabel() == "weight_decay"
  cells = phase_ax.collections[0].get_array().reshape(len(WDS), len(LRS))
  assert cells[0].tolist() == [3, 2, 2]  # confusion, memorization, memorization
  assert [t.get_text() for t in phase_ax.texts] == ["50%"]  # the one cell the seeds split
  steps = np.ma.getdata(steps_ax.collections[0].get_array()).reshape(len(WDS), len(LRS))
  assert (
    np.allclose(steps[1, 1:], np.log10(700)) and steps_ax.collections[0].get_array().mask[0].all()
  )
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["comprehension", "grokking", "memorization", "confusion", "diverged"]


def test_steps_to_threshold_left_out_with_too_many_series(tmp_path, monkeypatch):
  rd = rundir.load(make_grid_dir(tmp_path / "grid"))  # 9 settings of one train fraction
  assert "steps_to_threshold.png" in [p.name for p in plots.write_figures(rd)]
  monkeypatch.setattr(plots, "MAX_SERIES", 8)
  assert "steps_to_threshold.png" not in [p.name for p in plots.write_figures(rd, tmp_path)]


def test_phase_diagram_needs_two_axes(rd):
  assert "phase.png" not in [p.name for p in plots.write_figures(rd)]
  with pytest.raises(UserError, match="exactly two numeric axes besides seeds.*varies train_frac"):
    plots.phase_diagram(rd)


@pytest.mark.parametrize(
  "values, log",
  [
    ([1e-4, 1e-3, 1e-2, 1e-1], True),
    ([0.0001, 0.000398, 0.00158, 0.00631], True),  # configs/phase.py's rounded values
    ([0.1, 0.3, 0.5, 0.7, 0.9], False),  # train fractions
    ([0.0, 0.1, 1.0], False),  # a zero: no log axis
    ([0.01, 1.0], True),
    ([0.5, 0.6], False),
  ],
)
def test_phase_axes_log_where_log_spaced(values, log):
  edges, is_log = plots._edges(values)
  assert is_log == log and len(edges) == len(values) + 1
  assert all(
    lo < v < hi for lo, v, hi in zip(edges, values, edges[1:])
  )  # each value inside its cell


@pytest.mark.slow
def test_embeddings_figure_of_a_tiny_run(tmp_path):
  """Power et al. Fig. 3 on a tiny sweep of x + y mod 7 and S5: report.embeddings draws
  figures/embeddings.png, one t-SNE panel per operation, a point per answer class."""
  from conftest import tiny_config

  from grokjax import analysis, report, sweep

  cfg = tiny_config(**{"steps": 20, "checkpoint_every": 20, "report.embeddings": True})
  cfg.sweep.ops, cfg.sweep.seeds, cfg.sweep.train_fracs = ("add", "s5"), (0,), (0.5,)
  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  _, paths = report.report(workdir)
  assert workdir / "figures" / "embeddings.png" in paths
  assert (workdir / "figures" / "embeddings.png").read_bytes().startswith(PNG)
  fig = plots.embeddings(rundir.load(workdir))
  add, s5 = (ax for ax in fig.axes if ax.get_title())
  assert "x + y (mod 7)" in add.get_title() and "S5" in s5.get_title()
  (points,) = add.collections
  assert points.get_offsets().shape == (7, 2) and len(add.texts) == 7  # numbered classes
  assert np.allclose(points.get_array(), np.arange(7))  # coloured by class, cyclic map
  (points,) = s5.collections
  assert points.get_offsets().shape == (120, 2)
  legend = [t.get_text() for t in s5.get_legend().get_texts()]
  assert s5.get_legend().get_title().get_text() == "cycle type" and len(legend) == 7
  assert "5 (even)" in legend and "2+1+1+1 (odd)" in legend
  # its colours are the cycle types: the 24 five-cycles share one
  types = analysis.cycle_types(5)
  colors = points.get_facecolors()
  five = [k for k, t in enumerate(types) if t == (5,)]
  assert len(five) == 24 and (colors[five] == colors[five[0]]).all()
  assert not (colors[types.index((1, 1, 1, 1, 1))] == colors[five[0]]).all()


def test_embeddings_without_scikit_learn_is_a_one_line_error(monkeypatch, tmp_path):
  import importlib

  from conftest import tiny_config

  from grokjax import analysis
  from grokjax import config as config_lib

  real = importlib.import_module

  def no_sklearn(name, *args):
    if name.startswith("sklearn"):
      raise ImportError(f"No module named {name!r}")
    return real(name, *args)

  monkeypatch.setattr(analysis.importlib, "import_module", no_sklearn)
  message = "report.embeddings needs scikit-learn for its t-SNE; pip install -e '.[analysis]'"
  with pytest.raises(UserError) as e:
    analysis.tsne(np.eye(5))
  assert str(e.value) == message
  # a sweep that asks for the figure stops before it trains
  with pytest.raises(UserError, match=r"pip install -e '\.\[analysis\]'"):
    config_lib.validate(tiny_config(**{"report.embeddings": True}))
  config_lib.validate(tiny_config())  # off: no scikit-learn needed
  # and the report of a sweep that asks for it (a synthetic one: no training)
  run_dir = make_run_dir(tmp_path / "sweep")
  with pytest.raises(UserError, match="scikit-learn"):
    plots.embeddings(rundir.load(run_dir))


def test_cycle_types_of_s5():
  from grokjax import analysis

  types = analysis.cycle_types(5)
  counts = {t: types.count(t) for t in set(types)}
  assert counts == {
    (1, 1, 1, 1, 1): 1,
    (2, 1, 1, 1): 10,
    (2, 2, 1): 15,
    (3, 1, 1): 20,
    (3, 2): 20,
    (4, 1): 30,
    (5,): 24,
  }
  assert analysis.cycle_type((1, 2, 0, 4, 3)) == (3, 2)
