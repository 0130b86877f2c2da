"""Train a whole sweep in one program.

  python experiments/sweep.py --config configs/div.py [--workdir DIR] [--config.key=value ...]

Running it again with the same --workdir resumes from the last checkpoint. After
training it reports (grokjax.report: summary.json, the results table, the figures),
as `python experiments/report.py RUN_DIR` does at any time.
On several hosts, start it once per host with --distributed (and, where no cluster
environment such as SLURM says so, --coordinator, --num_processes and --process_id).
"""

import jax
from absl import flags
from ml_collections import config_flags

from grokjax import cli, report, sweep
from grokjax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Sweep config file, e.g. configs/div.py; override any key with --config.<key>=value, and "
  "sweep a [per-run] or [static] key with --config.sweep.<name>=v1,v2 (per-run values share "
  "one compiled program, static ones get a program each). Keys:\n" + config_lib.help_text(),
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (default runs/<name>-<timestamp>); an existing one is resumed."
)
_RECONFIGURE = flags.DEFINE_bool(
  "reconfigure", False, "Continue a sweep in --workdir with changed steps/eval/checkpoint settings."
)
_WAIT = flags.DEFINE_bool(
  "wait", False, "If another process is training --workdir, wait for it instead of exiting."
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "One process per host: jax.distributed.initialize() before anything else."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator", None, "With --distributed: host:port of process 0 (default: from the cluster)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]}; flags look like --config.steps=1000")
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  workdir = sweep.run_sweep(
    cli.config(_CONFIG), _WORKDIR.value, reconfigure=_RECONFIGURE.value, wait=_WAIT.value
  )
  if jax.process_index() == 0:
    try:
      text, _ = report.report(workdir)
    except KeyboardInterrupt:
      raise cli.Interrupted(
        f"interrupted while reporting; the sweep in {workdir} has finished training: "
        f"python experiments/report.py {workdir} reports it"
      ) from None
    print(f"{text}\nrun directory: {workdir}")


if __name__ == "__main__":
  cli.run(main)
