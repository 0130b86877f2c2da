"""Report on a run directory: summary.json, the results table, every figure and,
where the sweep's config asks (interp=True), the progress measures.

  python experiments/report.py RUN_DIR [--out DIR] [--threshold 0.99] [--[no]measures]

experiments/sweep.py runs this after training; run it again at any time, also on a
sweep that is still training (it reports the log so far).
"""

from absl import flags

from grokjax import cli, report

_OUT = flags.DEFINE_string("out", None, "Directory for the PNGs (default RUN_DIR/figures).")
_THRESHOLD = flags.DEFINE_float(
  "threshold", None, "Accuracy threshold in (0, 1] (default: the sweep's config, 0.99)."
)
_MEASURES = flags.DEFINE_bool(
  "measures", None, "Progress measures too (default: the config's interp)."
)


def main(argv):
  run_dir = cli.run_dir_arg(argv, "python experiments/report.py RUN_DIR [--out DIR]")
  text, paths = report.report(
    run_dir, threshold=_THRESHOLD.value, out=_OUT.value, measures=_MEASURES.value
  )
  print(text)
  for path in paths:
    print(path)


if __name__ == "__main__":
  cli.run(main)
