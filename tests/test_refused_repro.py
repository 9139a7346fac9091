"""A `dvc repro` that a stage refuses loses nothing: every output is the file it was before.

DVC deletes a stage's outputs before running its command, unless they are ``persist: true``
(dvc.yaml); ``outputs/metrics.json``, ``ranking.md`` and ``report.md`` are not even cached, so
nothing could bring them back. Each case compares every file of data/, outputs/ and figures/:
bytes, and the inode and modification time, so that rewriting a file with the same bytes counts.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, run

pytestmark = pytest.mark.pipeline


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    found = {}
    for folder in ("data", "outputs", "figures"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(root))] = (digest, stat.st_ino, stat.st_mtime_ns)
    return found


def set_param(root: Path, key: str, value) -> None:
    document = yaml.safe_load((root / "params.yaml").read_text())
    *parents, leaf = key.split(".")
    node = document
    for part in parents:
        node = node[part]
    node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def refused_repro(root: Path, env: dict) -> str:
    completed = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert completed.returncode != 0, completed.stdout
    return completed.stdout + completed.stderr


def assert_outputs_present(root: Path) -> None:
    for path in ("outputs/metrics.json", "outputs/ranking.md", "outputs/report.md",
                 "outputs/steps.csv", "figures/losses.png", "data/train.csv"):  # fmt: skip
        assert (root / path).is_file(), path


@pytest.mark.parametrize(
    "key, value, stage, message",
    [
        ("schedulers.StepLR.gamma", float("nan"), "train", "schedulers.StepLR.gamma: got nan"),
        ("data.noise", float("inf"), "generate", "data.noise: got inf"),
    ],
    ids=["train refuses a nan gamma", "generate refuses an infinite noise"],
)
def test_bad_params_under_dvc_repro_keep_every_output(
    reproduced, tmp_path, key, value, stage, message
):
    root = copy_project(reproduced["root"], tmp_path / "project")
    env = reproduced["env"]
    assert_outputs_present(root)
    before = snapshot(root)
    set_param(root, key, value)
    output = refused_repro(root, env)
    assert f"Running stage '{stage}'" in output, output
    assert message in output, output
    assert "learning rate becomes" not in output  # refused at its key, not found steps later
    assert snapshot(root) == before


def test_an_unopenable_store_under_dvc_repro_keeps_every_output(reproduced, tmp_path):
    root = copy_project(reproduced["root"], tmp_path / "project")
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store's folder would be\n")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    env = {**reproduced["env"], "MLFLOW_TRACKING_URI": uri}
    before, params = snapshot(root), (root / "params.yaml").read_text()

    # train opens the store before it writes anything
    set_param(root, "train.lr", 0.02)
    output = refused_repro(root, env)
    assert "Running stage 'train'" in output and f"cannot use the MLflow store {uri}" in output
    assert snapshot(root) == before
    (root / "params.yaml").write_text(params)

    # tune opens the store before it trains
    tuning_report = root / "pipeline/reporting/tuning_report.py"
    original = tuning_report.read_text()
    tuning_report.write_text(original + "\n# an edit: tune re-runs first\n")
    output = refused_repro(root, env)
    assert "Running stage 'tune'" in output and f"cannot use the MLflow store {uri}" in output
    assert "Running stage 'train'" not in output, output
    assert snapshot(root) == before
    tuning_report.write_text(original)  # DVC compares content: tune is up to date again

    # plot draws while the store opens, but writes no figure until the store has answered
    with open(root / "stages/plot.py", "a") as handle:
        handle.write("\n# an edit: plot re-runs, train does not\n")
    output = refused_repro(root, env)
    assert "Running stage 'plot'" in output and "Running stage 'train'" not in output, output
    assert f"cannot use the MLflow store {uri}" in output and "No figure was written" in output
    assert snapshot(root) == before


def test_a_run_that_succeeds_replaces_an_output_folder_whole(reproduced, tmp_path):
    """``persist`` leaves old outputs in place for the command: it must replace them all."""
    root = copy_project(reproduced["root"], tmp_path / "project")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # not the copied one, which names the original
    env = {**reproduced["env"], "MLFLOW_TRACKING_URI": store}
    before = {path: entry[0] for path, entry in snapshot(root).items()}
    (root / "figures/stale.png").write_bytes(b"from an older run")
    run(["dvc", "repro", "--force", "--single-item", "plot"], root, env)
    assert not (root / "figures/stale.png").exists()
    assert {path: entry[0] for path, entry in snapshot(root).items()} == before
