"""Export a sweep's metric log as a tidy table: one row per run per evaluation point.

  python experiments/export.py RUN_DIR --format csv|jsonl [--out FILE]

Each row holds the run's runs.json fields (index, op, p, train_frac, lr,
weight_decay, split_seed, seed), the step and every metric. Default output:
RUN_DIR/metrics.csv or RUN_DIR/metrics.jsonl.
"""

from absl import flags

from grokjax import analysis, cli, rundir

_FORMAT = flags.DEFINE_enum("format", "csv", list(analysis.EXPORT_FORMATS), "Output format.")
_OUT = flags.DEFINE_string("out", None, "Output file (default RUN_DIR/metrics.<format>).")


def main(argv):
  run_dir = cli.run_dir_arg(argv, "python experiments/export.py RUN_DIR --format csv")
  print(analysis.export(rundir.load(run_dir), _FORMAT.value, _OUT.value))


if __name__ == "__main__":
  cli.run(main)
