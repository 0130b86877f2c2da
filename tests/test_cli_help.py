"""--help of every experiments/ script: exit status 0, the usage and the script's own flags."""

import re

import pytest
from absl import app
from conftest import ROOT, run_script

from grokjax import cli

# The scripts with an absl main (cli.run / app.run); torch_reference.py is a module.
SCRIPTS = sorted(
  p.stem
  for p in (ROOT / "experiments").glob("*.py")
  if re.search(r"\b(cli|app)\.run\(", p.read_text())
)
_DEFINE = re.compile(r"DEFINE_\w+\(\s*\"(\w+)\"")


def test_scripts_found():
  assert {"sweep", "train", "plot", "export", "interp", "bench", "report"} <= set(SCRIPTS)


def _flags_of(name: str) -> list[str]:
  names = _DEFINE.findall((ROOT / "experiments" / f"{name}.py").read_text())
  assert names, name
  return names


def _assert_lists(out: str, names: list[str]) -> None:
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", out, re.MULTILINE))
  assert set(names) <= listed, sorted(set(names) - listed)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0_and_lists_the_flags(name):
  out = run_script(name, "--help")
  assert out.returncode == 0, out.stderr
  doc = (ROOT / "experiments" / f"{name}.py").read_text().split('"""')[1]
  assert out.stdout.startswith(doc.strip().splitlines()[0])  # the usage: the docstring
  assert f"experiments/{name}.py:" in out.stdout and "Try --helpfull" in out.stdout
  _assert_lists(out.stdout, _flags_of(name))


@pytest.mark.slow
def test_helpfull_and_short_spellings_exit_0():
  # train.py rewrites its argv (--train-frac -> --train_frac) before absl parses it.
  full = run_script("train", "--helpfull")
  assert full.returncode == 0, full.stderr
  _assert_lists(full.stdout, _flags_of("train") + ["alsologtostderr", "flagfile"])
  for flag in ("-?", "--helpshort"):
    out = run_script("plot", flag)
    assert out.returncode == 0, (flag, out.stderr)
    _assert_lists(out.stdout, _flags_of("plot"))


def test_user_errors_still_exit_2():
  out = run_script("plot", "--no_such_flag")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "no_such_flag" in lines[0]


def test_asks_for_help():
  app.define_help_flags()  # idempotent; app.run defines them before parsing
  for argv in (["--help"], ["-help"], ["-?"], ["--helpshort"], ["--helpfull"], ["x", "--helpxml"]):
    assert cli._asks_for_help(["prog", *argv]), argv
  for argv in ([], ["--verbosity=1"], ["--", "--help"], ["help"], ["--helper"]):
    assert not cli._asks_for_help(["prog", *argv]), argv
