"""The MLflow UI on the pipeline's store, seen in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import BIN, ROOT, project_env, run
from tests.servers import free_port, require, stop, wait_for_http

pytestmark = pytest.mark.browser
SCREENSHOTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]  # fmt: skip


def test_ui_lists_a_run_per_scheduler_and_charts_lr(project):
    chromium = shutil.which("chromium")
    require("Debian's chromium", chromium is not None)
    from playwright.sync_api import sync_playwright

    env = project_env(project)
    lrsched = str(BIN / "lrsched")
    run([lrsched, "generate", "--train", "data/train.csv", "--test", "data/test.csv"], project, env)
    run([lrsched, "train", "--train", "data/train.csv", "--test", "data/test.csv",
         "--curves", "curves", "--models", "models", "--metrics", "m.json", "--steps", "s.csv",
         "--ranking", "r.md", "--report", "report.md"],
        project, env)  # fmt: skip
    names = list(yaml.safe_load((project / "params.yaml").read_text())["schedulers"])
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lr-schedulers")
    step_lr = client.search_runs(
        [experiment.experiment_id], filter_string="tags.scheduler = 'StepLR'"
    )[0]

    port = free_port()
    log = project / "ui.log"
    with open(log, "wb") as output:
        ui = subprocess.Popen(
            [lrsched, "ui", "--port", str(port)], cwd=project, env=env, stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    SCREENSHOTS.mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", ui, log)
        # The page a newcomer is sent to: the link `lrsched ui` prints (and `make run`).
        printed = [line for line in log.read_text().splitlines() if "This project's runs: " in line]
        link = printed[0].split("This project's runs: ")[1]
        assert link == f"{base}/runs"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(link, wait_until="load")
                page.get_by_text(f"{len(names) + 1} matching runs").wait_for(timeout=60_000)
                # The children sit under their parent run: open it.
                page.locator(".ag-root button.du-bois-light-btn-icon-only").first.click()
                for name in names:
                    page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
                page.screenshot(path=SCREENSHOTS / "mlflow-runs.png")

                page.goto(f"{base}/runs/{step_lr.info.run_id}/model-metrics", wait_until="load")
                page.get_by_text("StepLR (lr)").first.wait_for(timeout=60_000)
                page.get_by_text("StepLR (loss)").first.wait_for(timeout=30_000)
                page.screenshot(path=SCREENSHOTS / "mlflow-steplr-charts.png")
            except Exception:
                page.screenshot(path=SCREENSHOTS / "mlflow-failure.png")
                raise
            finally:
                browser.close()
    finally:
        stop(ui)
    assert (SCREENSHOTS / "mlflow-steplr-charts.png").stat().st_size > 10_000
    assert os.path.getsize(SCREENSHOTS / "mlflow-runs.png") > 10_000
