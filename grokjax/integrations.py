"""Optional experiment trackers: every grokjax run as a wandb run and/or as
TensorBoard event files, fed the same records as the metric log.

Off by default; switched on by the config's ``log`` section::

  --config.log.wandb=True [--config.log.wandb_project=grokking]   # pip install 'grokjax[wandb]'
  --config.log.tensorboard=True       # pip install 'grokjax[tensorboard]': RUN_DIR/tensorboard/

A writer takes metric records ``{"step": int, metric: [one float per run]}`` and
fans each out to one tracker run per grokjax run. The libraries are imported when
the writer is made (a missing one is a UserError, before anything is trained);
tracker runs are opened at the first record, so a finished sweep opens none.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Protocol

from grokjax.errors import UserError


class Writer(Protocol):
  """Receives every metric record of a sweep, in order; closed once at the end."""

  def write(self, record: dict) -> None: ...

  def close(self) -> None: ...


def _metrics(record: dict, k: int) -> dict:
  """Run k's values of a record: {metric: float} without the step."""
  return {name: values[k] for name, values in record.items() if name != "step"}


class WandbWriter:
  """One wandb run per grokjax run, grouped by the run directory's name.

  Each wandb run's config is the sweep config with the run's runs.json entry on
  top (so train_frac, seed, lr ... are filterable). Its id is derived from the run
  directory and the run index, so resuming a sweep continues the same wandb runs.
  """

  def __init__(self, wandb, project: str, runs: list[dict], config: dict, workdir):
    self._wandb, self._project, self._runs, self._config = wandb, project, runs, config
    self._workdir = Path(workdir).absolute()
    self._open = None

  def _start(self):
    digest = hashlib.sha1(str(self._workdir).encode()).hexdigest()[:10]
    name = self._workdir.name
    self._open = [
      self._wandb.init(
        project=self._project,
        group=name,
        name=f"{name}-run{run['index']}",
        id=f"{digest}-{run['index']}",
        resume="allow",
        config={**self._config, **run, "workdir": str(self._workdir)},
        dir=str(self._workdir),
        reinit="create_new",  # many live runs in one process (wandb >= 0.19.10)
      )
      for run in self._runs
    ]

  def write(self, record: dict) -> None:
    if self._open is None:
      self._start()
    for k, wb_run in enumerate(self._open):
      wb_run.log(_metrics(record, k), step=record["step"])

  def close(self) -> None:
    for wb_run in self._open or ():
      wb_run.finish()
    self._open = None


class TensorBoardWriter:
  """TensorBoard event files, one directory per run: RUN_DIR/tensorboard/run<index>/,
  with the run's config as text and one scalar per metric."""

  def __init__(self, summary_writer_cls, runs: list[dict], config: dict, workdir):
    self._cls, self._runs, self._config = summary_writer_cls, runs, config
    self._logdir = Path(workdir) / "tensorboard"
    self._open = None

  def _start(self):
    self._open = []
    for run in self._runs:
      writer = self._cls(str(self._logdir / f"run{run['index']:03d}"))
      writer.add_text(
        "config", "    " + json.dumps({**self._config, **run}, indent=2).replace("\n", "\n    ")
      )
      self._open.append(writer)

  def write(self, record: dict) -> None:
    if self._open is None:
      self._start()
    for k, writer in enumerate(self._open):
      for name, value in _metrics(record, k).items():
        writer.add_scalar(name, value, record["step"])
      writer.flush()

  def close(self) -> None:
    for writer in self._open or ():
      writer.close()
    self._open = None


class Writers:
  """Several writers as one (none: a writer that does nothing)."""

  def __init__(self, writers=()):
    self.writers = list(writers)

  def write(self, record: dict) -> None:
    for w in self.writers:
      w.write(record)

  def close(self) -> None:
    for w in self.writers:
      w.close()


def _require(module: str, key: str, extra: str):
  try:
    return importlib.import_module(module)
  except ImportError:
    off = "; experiments/train.py: --nowandb" if key == "wandb" else ""
    raise UserError(
      f"log.{key}=True needs the {module} package: pip install 'grokjax[{extra}]', "
      f"or turn it off (--config.log.{key}=False{off})"
    ) from None


def make_writer(cfg, runs: list[dict], workdir) -> Writers:
  """The trackers that ``cfg.log`` switches on, for the sweep's ``runs`` (a UserError
  if a switched-on library is not installed). Nothing is opened or written yet."""
  log = cfg.get("log") or {}
  config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  writers = []
  if log.get("wandb"):
    wandb = _require("wandb", "wandb", "wandb")
    writers.append(WandbWriter(wandb, log.get("wandb_project", "grokking"), runs, config, workdir))
  if log.get("tensorboard"):
    tbx = _require("tensorboardX", "tensorboard", "tensorboard")
    writers.append(TensorBoardWriter(tbx.SummaryWriter, runs, config, workdir))
  return Writers(writers)
