"""The package's shape: no import cycle between modules, and each subpackage imports only the
layers below it, counting function-level and type-checking imports (read from the source, so
an import that runs only on some path counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Lowest first: a package may import itself and the packages before it, never one after.
LAYERS = (
    "core",
    "kernels",
    "problems",
    "schedules",
    "config",
    "trainer",
    "engines",
    "comparison",
    "reporting",
    "tracking",
)
ABOVE_THE_LIBRARY = ("stages", "cli")  # stages import the library; the CLI, the stages


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for folder in ("pipeline", "stages")
    for path in sorted((ROOT / folder).rglob("*.py"))
}


def imported_by(name: str) -> set[str]:
    """The project modules ``name`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pipeline.core import files` imports the module pipeline.core.files
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


GRAPH = {name: imported_by(name) for name in MODULES}


def layer_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "stages":
        return "stages"
    return parts[1] if len(parts) > 1 and parts[1] in (*LAYERS, "cli") else "pipeline"


def test_the_graph_sees_function_level_and_type_checking_imports():
    # Controls: the lazy import of the schedules in config.params, and a TYPE_CHECKING one.
    assert "pipeline.schedules.specs" in GRAPH["pipeline.config.params"]
    assert "pipeline.engines.execution" in GRAPH["pipeline.comparison.tuning"]
    assert len(MODULES) > 50


def test_no_module_imports_itself_through_others():
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_the_layers_below_it(name):
    layer = layer_of(name)
    for target in GRAPH[name]:
        other = layer_of(target)
        if other == layer or other == "pipeline":
            continue
        if layer in LAYERS:
            assert other in LAYERS, f"{name} imports {target}, above the library"
            assert LAYERS.index(other) < LAYERS.index(layer), (
                f"{name} ({layer}) imports {target} ({other}), a layer above it: move the"
                " shared part down, or the code up"
            )
        elif layer == "stages":
            assert other != "cli", f"{name}: a stage imports the CLI ({target}), which is above it"


def test_no_function_is_longer_than_the_limit(tmp_path):
    from scripts.check_function_length import MAX_LINES, long_functions

    assert long_functions(ROOT) == []
    # A control: the same check flags a function one line over the limit.
    (tmp_path / "pipeline").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pipeline" / "long.py").write_text(f"def too_long():\n{body}\n")
    assert long_functions(tmp_path) == [f"pipeline/long.py:1 too_long ({MAX_LINES + 1} lines)"]
