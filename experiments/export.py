"""Export a sweep's metric log as a tidy table: one row per run per evaluation point.

  python experiments/export.py RUN_DIR --format csv|jsonl [--out FILE]

Each row holds the run's runs.json fields (index, op, p, train_frac, lr,
weight_decay, split_seed, seed), the step and every metric. Default output:
RUN_DIR/metrics.csv or RUN_DIR/metrics.jsonl.
"""

from absl import flags

from grokjax import analysis, cli

_FORMAT = flags.DEFINE_enum("format", "csv", list(analysis.EXPORT_FORMATS), "Output format.")
_OUT = flags.DEFINE_string("out", None, "Output file (default RUN_DIR/metrics.<format>).")


def main(argv):
  if len(argv) != 2:
    raise cli.UserError(
      "give exactly one run directory: python experiments/export.py RUN_DIR --format csv"
      if len(argv) < 2
      else f"unexpected arguments {argv[2:]}; give one RUN_DIR"
    )
  print(analysis.export(analysis.load_run_dir(argv[1]), _FORMAT.value, _OUT.value))


if __name__ == "__main__":
  cli.run(main)
