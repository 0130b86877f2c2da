"""The library's layers: every module imports only modules of lower layers (at any
depth of the file, function-level imports included), and none uses another's
private names. So the import graph has no circle and no upward edge, and training
(sweep, layer 9) cannot reach reporting (plots, interp, report)."""

import ast
from pathlib import Path

import pytest

from grokjax import devices, layout, plan, rundir, sweep, train

PACKAGE = Path(__file__).resolve().parent.parent / "grokjax"
# Lower numbers first; a module may import modules of strictly lower layers.
LAYERS = {
  "errors": 0,
  "machine": 0,
  "registry": 1,
  "cli": 1,
  "data": 2,
  "losses": 2,
  "optim": 2,
  "logs": 2,
  "checkpoint": 2,
  "lock": 2,
  "analysis": 2,
  "integrations": 2,
  "model": 3,
  "methods": 3,
  "fourier": 3,
  "papers": 3,
  "config": 4,
  "train": 4,
  "layout": 5,
  "plan": 6,
  "devices": 7,
  "rundir": 8,
  "sweep": 9,
  "interp": 10,
  "plots": 11,
  "report": 12,
}


def _imports(tree: ast.AST):
  """(module imported, names taken from it) for every grokjax import in the tree."""
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grokjax"):
      if node.module == "grokjax":
        for alias in node.names:
          yield alias.name, []
      else:
        yield node.module.split(".")[1], [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("grokjax."):
          yield alias.name.split(".")[1], []


def test_every_module_has_a_layer():
  modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
  assert modules == set(LAYERS)


def test_imports_go_down_only_and_never_to_private_names():
  problems = []
  for path in sorted(PACKAGE.glob("*.py")):
    if path.stem == "__init__":
      continue
    tree = ast.parse(path.read_text())
    aliases = {}
    for target, names in _imports(tree):
      if LAYERS[target] >= LAYERS[path.stem]:
        problems.append(f"{path.stem} (layer {LAYERS[path.stem]}) imports {target}")
      problems += [f"{path.stem} imports {target}.{n}" for n in names if n.startswith("_")]
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "grokjax":
        aliases.update({a.asname or a.name: a.name for a in node.names})
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and node.attr.startswith("_")
      ):
        problems.append(f"{path.stem} uses {aliases[node.value.id]}.{node.attr}")
  assert not problems, "\n".join(problems)


def test_a_moved_name_says_where_it_went():
  for module, name in ((train, "make_sweep_fns"), (train, "padded_runs"), (sweep, "vmap_group")):
    with pytest.raises(AttributeError, match=f"has moved: use grokjax.layout.{name}$"):
      getattr(module, name)
    assert callable(getattr(layout, name))
  # sweep.py by concern: planning, device state, the run directory, checkpoint files
  for name, home in (("build", plan), ("device_inputs", devices), ("check_log_end", rundir)):
    with pytest.raises(AttributeError, match=f"has moved: use {home.__name__}.{name}$"):
      getattr(sweep, name)
    assert callable(getattr(home, name))
  with pytest.raises(AttributeError, match="use grokjax.checkpoint.checkpoint_steps$"):
    sweep.checkpoint_steps  # noqa: B018
  with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
    train.nothing  # noqa: B018
