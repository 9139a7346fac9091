"""DVC never calls a stale output up to date: each stage depends on all the code it runs.

What a stage runs is traced, not guessed: a real `dvc repro` logs every project module each
stage's processes import (``reproduced`` in conftest.py), function-level imports included.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_project, run

pytestmark = pytest.mark.pipeline


# The folder rules, as in dvc.yaml: pipeline/tracking/ only carries MLflow records (where the
# store is, its runs and their tags, the process that writes them) and cannot change an
# output's bytes; the CLI's group only dispatches to the stage's own command module.
def exempt(path: str) -> bool:
    return path.startswith("pipeline/tracking/") or path == "pipeline/cli/main.py"


def module_file(name: str) -> str | None:
    """``pipeline.core.files`` -> ``pipeline/core/files.py``; a package -> its ``__init__.py``."""
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None  # not a file of the project (a name probed and not found)


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_run_by(stage: dict, imports: dict[str, set[str]]) -> set[str]:
    """The project files a stage's command imported, in every process it started."""
    command = shlex.split(stage["cmd"])
    assert command[0] == "lrsched", command
    return {path for name in imports[command[1]] if (path := module_file(name))}


@pytest.mark.parametrize("name", list(stages()))
def test_every_stage_depends_on_the_code_it_runs(reproduced, name):
    stage = stages()[name]
    ran = code_run_by(stage, reproduced["imports"])
    assert f"stages/{name}.py" in ran, ran  # the trace saw the stage itself
    declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
    missing = sorted(p for p in ran - declared if not exempt(p))
    assert not missing, f"stage {name} runs {missing}: add them to its deps in dvc.yaml"
    unused = sorted(declared - ran)
    assert not unused, f"stage {name} never imports {unused}: drop them from its deps"


# An edit to each: the core every stage runs, a module only the tuning runs, the `ui` command
# no stage runs, and MLflow logging (a folder rule); with the stages DVC must then report.
EDITS = {
    "pipeline/core/files.py": {"generate", "tune", "train", "plot"},
    "pipeline/comparison/search.py": {"tune"},
    "pipeline/cli/tools.py": set(),
    "pipeline/tracking/records.py": set(),
}


@pytest.mark.parametrize("edited", list(EDITS))
def test_editing_a_module_makes_dvc_status_report_exactly_the_stages_that_run_it(
    reproduced, tmp_path, edited
):
    root = copy_project(reproduced["root"], tmp_path / "project")
    env = reproduced["env"]
    assert json.loads(run(["dvc", "status", "--json"], root, env).stdout) == {}
    with open(root / edited, "a") as handle:
        handle.write("\n# an edit that changes no output, but DVC cannot know that\n")
    status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    reported = {stage for stage, changes in status.items() if changes}
    running = {
        name
        for name, stage in stages().items()
        if edited in code_run_by(stage, reproduced["imports"]) and not exempt(edited)
    }
    assert reported == running == EDITS[edited], status
