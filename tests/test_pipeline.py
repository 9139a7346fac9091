"""The real pipeline through real DVC, in a fresh git repo, with tiny params."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core import files
from pipeline.reporting import curves
from pipeline.tracking.store import OUTPUTS_TAG
from tests.conftest import GIT, copy_project, project_env, run

pytestmark = pytest.mark.pipeline

OUTPUTS = [
    "data/train.csv",
    "data/test.csv",
    "outputs/metrics.json",
    "outputs/steps.csv",
    "outputs/ranking.md",
    "outputs/report.md",
    "figures/learning_rates.png",
    "figures/losses.png",
    "figures/test_accuracy.png",
    "figures/steps_to_target.png",
    "figures/decision_boundaries.png",
    "figures/final_metrics.png",
]


def digests(root: Path) -> dict[str, str]:
    found = {}
    for folder in ("data", "outputs", "figures"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def pipeline_run(reproduced, tmp_path_factory):
    """One project, taken through the whole life of a change; each test reads what it needs.
    Its first `dvc repro` is the session's (``reproduced``), copied."""
    root = copy_project(reproduced["root"], tmp_path_factory.mktemp("e2e") / "project")
    env = project_env(root)
    git = GIT
    record = {"root": root, "env": env, "first": reproduced["output"]}
    record["lock"] = (root / "dvc.lock").read_bytes()
    record["digests"] = digests(root)
    record["unchanged"] = run(["dvc", "repro"], root, env).stdout
    run([*git, "add", "-A"], root, env)
    run([*git, "commit", "-qm", "first run"], root, env)
    record["head"] = run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    record["forced"] = run(["dvc", "repro", "-f"], root, env).stdout
    record["lock_after_force"] = (root / "dvc.lock").read_bytes()
    record["digests_after_force"] = digests(root)
    record["status_after_force"] = run(["git", "status", "--porcelain"], root, env).stdout
    record["metrics"] = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    record["plots"] = json.loads(run(["dvc", "plots", "show", "--json"], root, env).stdout)
    return record


def test_every_output_is_written(pipeline_run):
    root = pipeline_run["root"]
    assert stages_run(pipeline_run["first"]) == ["generate", "tune", "train", "plot"]
    for path in OUTPUTS:
        assert (root / path).is_file() and (root / path).stat().st_size > 0, path
    names = list(yaml.safe_load((root / "params.yaml").read_text())["schedulers"])
    assert sorted(p.stem for p in (root / "outputs/curves").iterdir()) == sorted(names)
    assert sorted(p.stem for p in (root / "outputs/models").iterdir()) == sorted(names)
    assert (root / "figures/learning_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_stage_process_ends_without_the_teardown(reproduced):
    """Each stage's process, and the MLflow process it spawned, ran its exit handlers and
    skipped the interpreter's teardown (``pipeline.core.process_exit``). The other tests here
    read what those processes wrote, in files and in the store: nothing was lost."""
    endings = reproduced["endings"]
    for stage in ("generate", "tune", "train", "plot"):
        processes = endings[stage]
        # The stage's, and the MLflow process of each stage that records.
        assert len(processes) == (1 if stage == "generate" else 2), (stage, processes)
        for pid, events in processes.items():
            assert events == ("atexit",), (stage, pid, events)


def test_nothing_changed_reruns_nothing(pipeline_run):
    assert stages_run(pipeline_run["unchanged"]) == []
    assert "Data and pipelines are up to date" in pipeline_run["unchanged"]


def test_forced_rerun_gives_the_same_bytes(pipeline_run):
    assert stages_run(pipeline_run["forced"]) == ["generate", "tune", "train", "plot"]
    assert pipeline_run["digests_after_force"] == pipeline_run["digests"]
    assert pipeline_run["lock_after_force"] == pipeline_run["lock"]
    assert pipeline_run["status_after_force"] == ""  # git sees nothing new: lock unchanged


def test_metrics_and_plots_show_every_scheduler(pipeline_run):
    root = pipeline_run["root"]
    names = set(yaml.safe_load((root / "params.yaml").read_text())["schedulers"])
    (workspace,) = pipeline_run["metrics"].values()
    table = workspace["data"]["outputs/metrics.json"]["data"]
    assert set(table) == names
    for values in table.values():
        assert {"final_loss", "train_accuracy", "test_accuracy", "test_loss"} <= set(values)
    plots = pipeline_run["plots"]
    assert not plots.get("errors")
    series = plots["data"]["Learning rate used by each update"][0]["content"]["data"]["values"]
    assert {point["scheduler"] for point in series} == names


def test_changing_one_param_reruns_only_what_depends_on_it(pipeline_run):
    root, env = pipeline_run["root"], pipeline_run["env"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 0.02
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    diff = json.loads(run(["dvc", "params", "diff", "--json"], root, env).stdout)
    assert list(diff["params.yaml"]) == ["train.lr"]
    assert (diff["params.yaml"]["train.lr"]["old"], diff["params.yaml"]["train.lr"]["new"]) == (
        0.01,
        0.02,
    )
    output = run(["dvc", "repro"], root, env).stdout
    assert stages_run(output) == ["train", "plot"]
    assert "Stage 'generate' didn't change" in output
    metrics_diff = json.loads(run(["dvc", "metrics", "diff", "--json"], root, env).stdout)
    assert metrics_diff["outputs/metrics.json"], "a new rate must change some final metric"


def test_mlflow_holds_every_run_with_its_steps_and_lineage(pipeline_run):
    root = pipeline_run["root"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lr-schedulers")
    params = yaml.safe_load((root / "params.yaml").read_text())
    epochs, names = params["train"]["epochs"], list(params["schedulers"])

    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`lrsched.kind` = 'train'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(parents) >= 2  # the first repro and the forced one, at least
    assert all(p.info.status == "FINISHED" for p in parents)
    parent = parents[0]  # the newest: it made the files now in the work tree
    assert parent.data.tags["git.commit"] == pipeline_run["head"]
    assert parent.data.tags[OUTPUTS_TAG] == files.sha256_files([root / "outputs/metrics.json"])
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {p for p in OUTPUTS if p.startswith("figures/")}

    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert sorted(c.data.tags["scheduler"] for c in children) == sorted(names)
    data_digest = files.sha256_files([root / "data/train.csv", root / "data/test.csv"])
    for child in children:
        name = child.data.tags["scheduler"]
        assert child.info.status == "FINISHED"
        tags = child.data.tags
        assert tags["data.sha256"] == data_digest
        assert tags["git.commit"] == pipeline_run["head"]
        assert tags["device"] == "cpu" and tags["torch.version"].startswith("2.13.0")
        assert len(tags["params.sha256"]) == 64
        assert child.data.params["train.lr"] == str(params["train"]["lr"])
        assert child.data.params["scheduler.type"] == params["schedulers"][name]["type"]

        table = curves.read(root / "outputs/curves" / f"{name}.csv")
        for key in ("lr", "loss"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [m.step for m in history] == list(range(epochs)), (name, key)
            np.testing.assert_array_equal([m.value for m in history], table[key])
        if name == "LambdaLR":
            liner2 = client.get_metric_history(child.info.run_id, "lr/Liner2")
            np.testing.assert_array_equal([m.value for m in liner2], table["lr/Liner2"])
        final = json.loads((root / "outputs/metrics.json").read_text())[name]
        assert {"final_loss", "test_accuracy", "rank"} <= set(final)
        for key, value in final.items():
            assert child.data.metrics[key] == pytest.approx(value, rel=1e-12)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "weights")}
        assert artifacts == {f"weights/{name}.pt"}
        # Its model (tests/test_models.py checks what it predicts), and the data it read.
        outputs = [output.model_id for output in child.outputs.model_outputs]
        assert len(outputs) == 1
        assert client.get_logged_model(outputs[0]).source_run_id == child.info.run_id
        inputs = {i.dataset.name: i.dataset.digest for i in child.inputs.dataset_inputs}
        assert inputs == {
            path: hashlib.md5((root / path).read_bytes()).hexdigest()
            for path in ("data/train.csv", "data/test.csv")
        }


def test_a_seed_sweep_as_a_dvc_experiment(pipeline_run):
    root, env = pipeline_run["root"], pipeline_run["env"]
    run(["dvc", "exp", "run", "-S", "train.seeds=4", "-n", "four-seeds"], root, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    experiments = [
        exp for rev in shown for exp in (rev.get("experiments") or []) if exp.get("name")
    ]
    (four,) = [e for e in experiments if e["name"] == "four-seeds"]
    data = four["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["seeds"] == 4
    metrics = data["metrics"]["outputs/metrics.json"]["data"]
    for values in metrics.values():
        assert 0 < values["test_accuracy_ci95"] < 1
    ranks = sorted(values["rank"] for values in metrics.values())
    assert ranks == list(range(1, len(metrics) + 1))
    assert sum("p_vs_best" in values for values in metrics.values()) == len(metrics) - 1
    ranking = (root / "outputs/ranking.md").read_text()
    assert "Means over 4 seed(s)" in ranking and "Wilcoxon" in ranking
    steps = curves.read(root / "outputs/curves/StepLR.csv")
    assert (steps["loss_low"] <= steps["loss"]).all() and (
        steps["loss"] <= steps["loss_high"]
    ).all()


def test_a_grid_over_rates_and_noise_as_a_dvc_experiment(pipeline_run):
    root, env = pipeline_run["root"], pipeline_run["env"]
    run(["dvc", "exp", "run", "-S", "train.lr=[0.05,0.01]", "-S", "data.noise=[0.1,0.3]",
         "-S", "train.seeds=2", "-n", "grid"], root, env)  # fmt: skip
    names = list(yaml.safe_load((root / "params.yaml").read_text())["schedulers"])
    expected = {
        f"{name}@lr={lr},noise={noise}" for noise in (0.1, 0.3) for lr in (0.05, 0.01)
        for name in names
    }  # fmt: skip
    metrics = json.loads((root / "outputs/metrics.json").read_text())
    assert set(metrics) == expected
    assert {p.stem for p in (root / "outputs/models").iterdir()} == expected
    # One ranking per noise level: runs on different data are not ranked against each other.
    for noise in (0.1, 0.3):
        ranks = sorted(v["rank"] for k, v in metrics.items() if k.endswith(f"noise={noise}"))
        assert ranks == list(range(1, 2 * len(names) + 1))
    ranking = (root / "outputs/ranking.md").read_text()
    assert "## data.noise = 0.1" in ranking and "## data.noise = 0.3" in ranking
    report = (root / "outputs/report.md").read_text()
    large_vs_small = next(line for line in report.splitlines() if line.startswith("| A large"))
    assert "not tested" not in large_vs_small  # a grid over train.lr makes it testable
    assert "constant@lr=0.05,noise=0.1" in report and "constant@lr=0.01,noise=0.1" in report
    train_keys = {tuple(row.split(",")[:2]) for row in
                  (root / "data/train.csv").read_text().splitlines()[1:]}  # fmt: skip
    assert train_keys == {(str(seed), str(noise)) for seed in (42, 43) for noise in (0.1, 0.3)}


def test_committed_lock_matches_the_code_and_params():
    """A stale dvc.lock would make `make run` on a fresh clone rewrite it: git would see it."""
    from tests.conftest import ROOT

    status = json.loads(run(["dvc", "status", "--json"], ROOT, project_env(ROOT)).stdout)
    stale = {}
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            # On a fresh clone upstream outputs are absent ("deleted"): that is not staleness.
            deps = {
                path: state
                for path, state in change.get("changed deps", {}).items()
                if state != "deleted"
            }
            if deps or "changed command" in change:
                stale[stage] = {**change, "changed deps": deps}
    assert not stale, f"re-run `dvc repro` and commit dvc.lock: {stale}"
