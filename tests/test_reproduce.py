"""configs/reproduce.py: every published result is one command, in its paper's setting,
with a CPU twin that shrinks only p, steps or seeds; the report puts the paper's
result beside the sweep's (grokjax.papers)."""

import runpy
from pathlib import Path

import pytest
from conftest import run_script

from grokjax import papers, plan, rundir, sweep

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "reproduce.py"
MODULE = runpy.run_path(str(CONFIG))
NAMES = list(MODULE["SETTINGS"])
# What a twin may change: the problem's size and the budget, never the method.
SHRINKABLE = {
  "name",
  "reproduce",
  "p",
  "steps",
  "eval_points",
  "eval_every",
  "checkpoint_every",
  "checkpoint_keep",
  "sweep.seeds",
  "sweep.train_fracs",
  "sweep.lr",  # a phase diagram's grid, coarser
  "sweep.weight_decay",
  "batch_size",  # only below the paper's cap of 512 where N_train / 2 is smaller anyway
}


def flat(cfg, prefix=""):
  out = {}
  for key, value in cfg.items():
    if hasattr(value, "items"):
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def test_every_result_has_a_paper_entry_and_a_twin():
  assert set(NAMES) == set(papers.RESULTS)
  for name in NAMES:
    paper, twin = MODULE["get_config"](name), MODULE["get_config"](name + "_cpu")
    assert paper.reproduce == name and twin.reproduce == name + "_cpu"
    changed = {k for k, v in flat(twin).items() if flat(paper).get(k) != v}
    assert changed <= SHRINKABLE, (name, changed - SHRINKABLE)
    plan.build(twin)  # validates every key


def test_unknown_or_missing_name_is_one_line(tmp_path):
  for arg in ("configs/reproduce.py:bogus", "configs/reproduce.py"):
    proc = run_script("sweep", "--config", str(ROOT / arg), "--workdir", tmp_path / "x")
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error:") and "power_fig1" in line
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_twin_runs_and_reports_beside_the_paper(name, tmp_path):
  """Two steps of each twin through the real command: it trains, and its report names
  the paper, its published result and the twin."""
  proc = run_script(
    "sweep",
    "--config",
    f"{CONFIG}:{name}_cpu",
    "--workdir",
    tmp_path / "run",
    "--config.steps=2",
    "--config.eval_schedule=linear",
    "--config.eval_every=1",
    "--config.checkpoint_every=2",
    "--config.interp=False",
    "--config.report.embeddings=False",
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = papers.RESULTS[name]
  assert f"Reproducing {result.paper}, {result.where}:" in proc.stdout
  assert "published: " + result.published in proc.stdout
  assert "a CPU-sized twin" in proc.stdout


@pytest.mark.slow
def test_orthograd_generalises_where_softmax_memorises(tmp_path):
  """Prieto et al.'s ⊥Grad claim in their own setting (one seed of three, all 300 steps):
  without weight decay, softmax memorises and stays far below chance-free accuracy, while
  ⊥Grad reaches 99% validation accuracy within the budget."""
  from grokjax import analysis

  cfg = MODULE["get_config"]("prieto_orthograd_cpu")
  cfg.eval_float64 = False  # the collapse fraction is not what is asserted
  workdir = sweep.run_sweep(cfg, tmp_path / "run", progress=False)
  rd = rundir.load(workdir)
  summary = {r["orthograd"]: s for r, s in zip(rd.runs, analysis.summary(rd, 0.99))}
  assert summary[False]["train_step"] is not None  # softmax memorises...
  assert summary[False]["last_val_acc"] < 0.1  # ...and does not generalise
  assert summary[True]["val_step"] is not None and summary[True]["val_step"] <= 300
  assert summary[True]["final_val_acc"] > 0.99
