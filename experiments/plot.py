"""Draw a sweep's figures: accuracy/loss curves, steps to a threshold, weight norm, phases.

  python experiments/plot.py RUN_DIR [--out DIR] [--threshold 0.99]

Writes curves.png, steps_to_threshold.png and weight_norm.png into RUN_DIR/figures/
(or --out), variants.png for a sweep over methods and phase.png (the phase diagram)
for a sweep over two numbers besides seeds, e.g. configs/phase.py's lr x weight
decay. Works on a sweep that is still training: it plots the log so far.
"""

from absl import flags

from grokjax import cli, plots, rundir

_OUT = flags.DEFINE_string("out", None, "Directory for the PNGs (default RUN_DIR/figures).")
_THRESHOLD = flags.DEFINE_float(
  "threshold", None, "Accuracy threshold in (0, 1] (default: the sweep's config, 0.99)."
)


def main(argv):
  run_dir = cli.run_dir_arg(argv, "python experiments/plot.py RUN_DIR [--out DIR]")
  for path in plots.write_figures(rundir.load(run_dir), _OUT.value, _THRESHOLD.value):
    print(path)


if __name__ == "__main__":
  cli.run(main)
