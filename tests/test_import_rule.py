"""The import rule of docs/architecture.md, checked on every module of the package.

Each stage may import only from its own package and from the stages below it; the three engines
never import one another. Imports inside functions count too: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cosmosim"

# Lowest first: a module may import modules of its own layer's package or of a lower layer.
LAYERS = [
    ("cosmosim.errors", "cosmosim.files", "cosmosim.units", "cosmosim.provenance", "cosmosim.moved", "cosmosim"),
    ("cosmosim.inputs", "cosmosim.data"),
    ("cosmosim.workload", "cosmosim.model"),
    ("cosmosim.device",),
    ("cosmosim.scenario",),
    ("cosmosim.results",),
    ("cosmosim.engines.des", "cosmosim.engines.analytic", "cosmosim.engines.replay"),
    ("cosmosim.runner", "cosmosim.analytic"),
    ("cosmosim.sweep", "cosmosim.host"),
    ("cosmosim.cli",),
]
ENGINES = LAYERS[6]


def unit_of(module: str) -> str:
    """The longest LAYERS entry that `module` is or lies inside."""
    matches = [unit for layer in LAYERS for unit in layer if module == unit or module.startswith(unit + ".")]
    return max(matches, key=len)


def layer_of(module: str) -> int:
    unit = unit_of(module)
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found if name == "cosmosim" or name.startswith("cosmosim.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        unit_of(module_name(path))  # raises ValueError (max of nothing) for a module no layer names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_data_flow(path):
    here = module_name(path)
    for line, imported in imports_of(path):
        if unit_of(imported) == unit_of(here) or layer_of(imported) == layer_of(here) == 0:
            continue  # within a package, or among the base modules
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}"
        assert layer_of(imported) < layer_of(here), f"{where}: a lower stage may not import a higher one"
        assert not (unit_of(here) in ENGINES and unit_of(imported) in ENGINES), f"{where}: engines are independent"


def test_the_rule_sees_a_violation(tmp_path):
    """The checker itself: an upward import is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cosmosim.cli.run import run\n")
    assert imports_of(bad) == [(2, "cosmosim.cli.run")]
    assert layer_of("cosmosim.cli.run") > layer_of("cosmosim.device.cache")


def test_an_old_module_path_says_where_it_went():
    with pytest.raises(ModuleNotFoundError, match=r"cosmosim\.sim moved to cosmosim\.device"):
        import cosmosim.sim.engine  # noqa: F401
