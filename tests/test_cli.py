"""The CLI, driven for real with CliRunner; every command documented."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli.main import cli
from pipeline.schedules.specs import torch_types
from tests.conftest import ROOT, tiny_document
from tests.servers import stop


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_document(), sort_keys=False))
    return tmp_path


def test_every_command_has_help_and_a_readme_entry():
    readme = (ROOT / "README.md").read_text()
    runner = CliRunner()
    for name, command in cli.commands.items():
        assert command.help, f"lrsched {name} has no help"
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert f"lrsched {name}" in readme, f"README does not document lrsched {name}"
        assert f"{name}:" in (ROOT / "dvc.yaml").read_text() or name not in {
            "generate",
            "train",
            "plot",
        }


def test_schedulers_lists_ours_and_every_torch_class():
    result = CliRunner().invoke(cli, ["schedulers"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines()[1:] if line.strip()}
    assert {"constant", "manual", *torch_types()} <= listed


def test_preview_prints_the_rates_training_would_use(in_tmp):
    result = CliRunner().invoke(
        cli, ["preview", "StepLR", "manual", "--points", "13", "--png", "rates.png"]
    )
    assert result.exit_code == 0, result.output
    header, step_lr, manual, wrote = result.output.splitlines()
    steps = [int(step) for step in header.split()[3:]]
    assert header.split()[:3] == ["schedule", "\\", "step"]
    assert steps == [0, 10, 20, 30, 40, 50, 60, 69, 79, 89, 99, 109, 119]
    assert step_lr.split()[0] == "StepLR" and manual.split()[0] == "manual"
    for step, shown in zip(steps, step_lr.split()[1:], strict=True):
        assert float(shown) == pytest.approx(0.01 * 0.99 ** (step // 10), rel=1e-3)
    for step, shown in zip(steps, manual.split()[1:], strict=True):
        assert float(shown) == pytest.approx(0.01 * 0.99 ** np.ceil(step / 10), rel=1e-3)
    assert wrote == "wrote rates.png"
    assert Path("rates.png").read_bytes()[:4] == b"\x89PNG"


def test_preview_of_an_unknown_name_says_which_exist(in_tmp):
    result = CliRunner().invoke(cli, ["preview", "StepRL"])
    assert result.exit_code == 1
    assert "Error: no schedule named StepRL in params.yaml; known: constant, manual," in (
        result.output
    )


def test_validate_summarises_a_good_file(in_tmp):
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("params.yaml is valid: 11 schedules (constant, manual, StepLR")
    assert result.output.rstrip().endswith("noise 0.2, 1 seed(s): 11 runs")


def test_ui_points_to_a_tracking_server_instead_of_starting_one(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    result = CliRunner().invoke(cli, ["ui"])
    assert result.exit_code == 0
    # Nothing listens there: it still says where the store is, and that it cannot be read.
    assert result.output.startswith(
        "the store is a tracking server: browse http://127.0.0.1:5999  (cannot read the MLflow "
        "store http://127.0.0.1:5999: "
    )
    failed = CliRunner().invoke(cli, ["ui", "--print-link"])
    assert failed.exit_code == 1 and "cannot read the MLflow store" in failed.output


@pytest.mark.server
def test_ui_serves_the_embedded_store(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-m", "pipeline", "ui", "--port", str(port)]
    # Its own session: `mlflow ui` starts uvicorn and job consumers, all stopped as a group.
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    status = reply.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, server.stdout.read().decode() if server.poll() is not None else ""
        # One server process (uvicorn, one worker) under `mlflow ui`, and no job runner.
        started = psutil.Process(server.pid).children(recursive=True)
        assert len(started) == 1, [" ".join(p.cmdline())[:120] for p in started]
    finally:
        stop(server)
