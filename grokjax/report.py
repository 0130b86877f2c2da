"""Reporting, its own step after training: summary.json, the results table, the
figures and (where the config asks, ``interp``) the progress measures of a run
directory. Runs again at any time, also on a sweep still training (it reports the
log so far).
"""

from __future__ import annotations

from pathlib import Path

from grokjax import analysis, interp, logs, papers, plots, rundir
from grokjax.errors import UserError


def report(
  run_dir, *, threshold: float | None = None, out=None, measures: bool | None = None
) -> tuple[str, list[Path]]:
  """Writes RUN_DIR/summary.json and every figure (into ``out``, default
  RUN_DIR/figures/), and the progress measures when ``measures`` (default: the
  config's ``interp``). Returns the results table as text and the paths written."""
  rd = rundir.load(run_dir)
  if not (rd.path / "metrics.msgpack").exists() and rd.steps():
    raise UserError(
      f"{rd.path / 'metrics.msgpack'} is missing, though the sweep has trained (checkpoints "
      f"at steps {rd.steps()}); restore the file, or train again in a new --workdir"
    )
  analysis.require_metrics(rd)
  threshold = rd.threshold if threshold is None else threshold
  summary = analysis.summary(rd, threshold)
  paths = plots.write_figures(rd, out, threshold)
  if rd.config.get("interp") if measures is None else measures:
    paths += write_measures(rd, out)
  logs.write_json_atomic(rd.path / "summary.json", summary)
  paths.append(rd.path / "summary.json")
  rule = analysis.PhaseRule.of(rd.config)
  text = analysis.table(summary, rd.runs, analysis.swept(rd.runs), rule)
  if rd.config.get("reproduce"):
    text += "\n\n" + papers.comparison(rd.config["reproduce"], summary, rd.runs, threshold)
  return text, paths


def write_measures(rd, out=None, max_keys: int | None = None) -> list[Path]:
  """The progress measures of every add/sub run: figures and RUN_DIR/interp.json."""
  interp.measured_runs(rd)
  analysis.require_metrics(rd)
  m = interp.compute(rd, max_keys)
  summary = interp.summary(rd, m)
  return [*plots.write_interp_figures(rd, m, summary, out), interp.write_json(rd, summary)]
