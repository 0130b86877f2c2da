"""Progress measures of a sweep's add/sub runs, from its saved checkpoints.

  python experiments/interp.py RUN_DIR [--out DIR] [--max_keys N]

Writes interp_run<k>_{spectrum,measures,circle}.png into RUN_DIR/figures/ (or --out)
and the measures as RUN_DIR/interp.json: Nanda et al.'s restricted and excluded
losses, key frequencies and Gini coefficients, in float64 (docs/progress_measures.md).
Train with configs/interp.py, which keeps a checkpoint every 100 steps.
"""

from absl import flags

from grokjax import cli, report, rundir

_OUT = flags.DEFINE_string("out", None, "Directory for the PNGs (default RUN_DIR/figures).")
_MAX_KEYS = flags.DEFINE_integer(
  "max_keys",
  None,
  "Most key frequencies to keep: those the most MLP neurons prefer (default: every "
  "frequency some neuron prefers, Nanda et al.'s rule).",
  lower_bound=1,
)


def main(argv):
  run_dir = cli.run_dir_arg(argv, "python experiments/interp.py RUN_DIR [--out DIR]")
  for path in report.write_measures(rundir.load(run_dir), _OUT.value, _MAX_KEYS.value):
    print(path)


if __name__ == "__main__":
  cli.run(main)
