"""The engines without a cluster: shards give the batch's bytes, errors come early and clear,
and nothing but the Ray engine imports Ray (tests/test_ray_cluster.py runs a real cluster)."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config.params import ExecutionParams, parse_params
from pipeline.core.validation import ParamsError
from pipeline.engines import execution, shards, units
from pipeline.problems import data
from pipeline.trainer.batch import Setup
from pipeline.trainer.batched import replicate_finals, train_batch
from stages import generate
from tests.conftest import BIN, ROOT, make_project, project_env, run, tiny_document
from tests.servers import free_port
from tests.test_faults import train_command, train_outputs

# Refuses every import of Ray, in the process and in every process it starts (PYTHONPATH).
NO_RAY = """
import sys


class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ray":
            raise ImportError(f"{name} imported where Ray must not be")
        return None


sys.meta_path.insert(0, _NoRay())
"""


def _no_ray_env(tmp_path: Path, env: dict) -> dict:
    (tmp_path / "no_ray").mkdir(exist_ok=True)
    (tmp_path / "no_ray" / "sitecustomize.py").write_text(NO_RAY)
    return {**env, "PYTHONPATH": str(tmp_path / "no_ray")}


def _sets(params) -> dict:
    return {
        (seed, noise): data.generate(params.data.n_samples, noise, seed)
        for seed in params.seeds
        for noise in {point.noise for point in params.grid}
    }


@pytest.mark.parametrize("count", [2, 3, 7, 40])
def test_shards_merge_to_the_whole_batch_bit_for_bit(tiny, count):
    """Every schedule (the loss-watching ReduceLROnPlateau, per-layer LambdaLR, the growing
    batch) at two rates and two seeds: cut any way, the numbers are the one batch's."""
    document = copy.deepcopy(tiny)
    document["train"].update(seeds=2, lr=[0.01, 0.05])
    params = parse_params(document)
    sets = _sets(params)
    tests = {noise: data.generate(50, noise, 7) for noise in {p.noise for p in params.grid}}
    keys = [(run.name, seed) for run in params.runs for seed in params.seeds]
    replicates = shards.replicates(params, keys)
    whole = train_batch(replicates, Setup.of(params), sets, torch.device("cpu"))
    groups = shards.cut(len(replicates), count)
    counted: list[int] = []
    parts = [
        shards.train_shard(params, [keys[i] for i in group], sets, tests, "cpu", counted.append)
        for group in groups
    ]
    merged = shards.merge(parts, groups, replicates)
    assert merged.finals is not None
    for index, finals in enumerate(merged.finals):  # computed in the shard, as run_results does
        assert finals == replicate_finals(whole, index, params.architecture, sets, tests)
    assert sum(counted) == len(replicates) * params.train.epochs  # replicate-updates
    assert merged.replicates == whole.replicates
    for name in ("rates", "losses", "batch_sizes"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    for got, expected in zip(merged.state_dicts, whole.state_dicts, strict=True):
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[key], expected[key]) for key in got)


def test_the_cut_deals_every_replicate_once_and_spreads_each_schedule():
    for count, wanted in [(1, 1), (11, 2), (11, 4), (5, 9), (40, 40)]:
        groups = shards.cut(count, wanted)
        assert len(groups) == min(count, wanted)
        assert sorted(i for group in groups for i in group) == list(range(count))
        assert max(map(len, groups)) - min(map(len, groups)) <= 1
    # 11 schedules x 4 seeds, seed-major within a schedule: each shard gets every schedule's
    # seeds in turn, so no shard holds all of one costly schedule.
    groups = shards.cut(44, 4)
    assert all({i // 4 for i in group} == set(range(11)) for group in groups)


@pytest.mark.parametrize("cpus", [1, 2, 3, 16])
@pytest.mark.parametrize("replicates", [1, 11, 440, 2_499, 5_000, 6_600, 26_400, 10**6])
@pytest.mark.parametrize("steps", [1, 1000, 20_000])
def test_auto_cuts_a_shard_per_cpu_and_more_only_where_each_stays_large(cpus, replicates, steps):
    count = execution.cpu_shards(replicates, cpus, steps)
    updates = replicates * steps
    assert 1 <= count <= min(replicates, cpus * execution.SHARDS_PER_CPU)
    if updates < cpus * units.MIN_SPLIT_UPDATES:
        # Too small for every CPU: a worker only for each MIN_SPLIT_UPDATES (one, at least).
        assert count < cpus or cpus == 1
        assert count == 1 or updates // count >= units.MIN_SPLIT_UPDATES
        assert count == min(max(1, updates // units.MIN_SPLIT_UPDATES), replicates)
        return
    # Every CPU gets as many shards (none waits out a last round alone); more than one each
    # only where every shard keeps MIN_SHARD replicates (a batch's per-step overhead) and
    # MIN_SPLIT_UPDATES, and never more than SHARDS_PER_CPU each.
    assert count % cpus == 0
    assert cpus <= count
    if count > cpus:
        assert replicates // count >= execution.MIN_SHARD
        assert updates // count >= units.MIN_SPLIT_UPDATES
    wanted = cpus * execution.SHARDS_PER_CPU
    if min(replicates // execution.MIN_SHARD, updates // units.MIN_SPLIT_UPDATES) >= wanted:
        assert count == wanted


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        ({"engine": "spark"}, "execution.engine: got 'spark'; input should be 'local' or 'ray'"),
        ({"address": "head node"}, "execution.address: got 'head node'; 'auto' or the HOST:PORT"),
        ({"address": "10.0.0.5"}, "execution.address: got '10.0.0.5'; 'auto' or the HOST:PORT"),
        ({"shards": 0}, "execution.shards: got 0; 'auto' or a whole number of shards from 1"),
        ({"shards": "all"}, "execution.shards: got 'all'; 'auto' or a whole number of shards"),
        ({"shards": 2.0}, "execution.shards: got 2.0; 'auto' or a whole number of shards"),
        ({"nodes": 2}, "execution.nodes"),
    ],
)
def test_bad_execution_values_name_the_key_the_value_and_what_is_allowed(section, complaint):
    document = {**tiny_document(), "execution": section}
    with pytest.raises(ParamsError) as raised:
        parse_params(document, schedules="skip")
    assert complaint in str(raised.value)


def test_good_execution_values_and_the_defaults():
    assert ExecutionParams() == ExecutionParams(engine="local", address="auto", shards="auto")
    for address in ("auto", "10.0.0.5:6379", "head.example.org:6379", "[::1]:6379"):
        assert ExecutionParams(address=address).address == address
    params = parse_params(tiny_document(), schedules="skip")
    assert params.execution == ExecutionParams()  # params.yaml's section is the defaults


def test_the_engine_is_not_part_of_the_params_digest():
    """The lineage tags (params.sha256) of a run do not depend on where it trained."""
    local = parse_params(tiny_document(), schedules="skip")
    document = tiny_document()
    document["execution"] = {"engine": "ray", "address": "10.0.0.5:6379", "shards": 8}
    elsewhere = parse_params(document, schedules="skip")
    assert local.digest() == elsewhere.digest()
    document["train"]["lr"] = 0.02
    assert parse_params(document, schedules="skip").digest() != local.digest()


def test_auto_address_is_ray_address_then_the_local_cluster_file(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(execution.ExecutionError, match="no Ray cluster was started on this host"):
        execution.resolve_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")
    assert execution.resolve_address("auto") == "10.1.2.3:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6380")
    assert execution.resolve_address("auto") == "10.9.9.9:6380"
    assert execution.resolve_address("10.0.0.5:7000") == "10.0.0.5:7000"


def test_a_closed_port_is_named_within_seconds():
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(execution.ExecutionError) as raised:
        execution.probe(address)
    assert time.monotonic() - started < execution.CONNECT_TIMEOUT_S
    assert f"cannot reach the Ray cluster at {address} (execution.address)" in str(raised.value)
    with socket.socket() as listening:  # and an open one passes
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        execution.probe(f"127.0.0.1:{listening.getsockname()[1]}")


def test_import_pipeline_and_help_never_import_ray(tmp_path):
    env = _no_ray_env(tmp_path, project_env(tmp_path))
    script = (
        "import sys, pipeline, pipeline.engines.execution, pipeline.engines.shards,"
        " pipeline.cli.main, pipeline.cli.train, pipeline.cli.tune, stages.train,"
        " stages.tune; assert 'ray' not in sys.modules"
    )
    run([sys.executable, "-c", script], ROOT, env)
    assert "Usage: lrsched" in run([str(BIN / "lrsched"), "--help"], ROOT, env).stdout


def test_the_ray_engine_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    with socket.socket() as listening:  # a port that answers, so that the import is reached
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        script = (
            "from pipeline.engines import execution\n"
            "from pipeline.config.params import ExecutionParams\n"
            f"execution.connect(ExecutionParams(engine='ray', address={address!r}), 'cpu')\n"
        )
        env = _no_ray_env(tmp_path, project_env(tmp_path))
        env["PYTHONPATH"] += os.pathsep + str(ROOT)
        failed = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True
        )
    assert failed.returncode == 1
    assert "Ray is not installed here: pip install -e '.[ray]'" in failed.stderr


def _train(project: Path, env: dict) -> dict[str, bytes]:
    run(train_command(), project, env)
    return train_outputs(project)


@pytest.mark.pipeline  # three trains
def test_local_shards_give_the_one_batch_bytes_without_importing_ray(tmp_path):
    document = tiny_document()
    document["train"]["seeds"] = 3
    project = make_project(tmp_path / "project", document)
    env = project_env(project)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    params = parse_params(document)
    generate.run(params, project / "data" / "train.csv", project / "data" / "test.csv")
    one_batch = _train(project, env)
    env = _no_ray_env(tmp_path, env)
    for count in (2, 5):
        document["execution"]["shards"] = count
        (project / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        sharded = _train(project, env)
        assert sharded.keys() == one_batch.keys()
        differing = [name for name in one_batch if sharded[name] != one_batch[name]]
        assert differing == [], count


@pytest.mark.pipeline  # starts lrsched train
def test_an_unreachable_cluster_stops_train_within_seconds_writing_nothing(project):
    document = yaml.safe_load((project / "params.yaml").read_text())
    address = f"127.0.0.1:{free_port()}"
    document["execution"] = {"engine": "ray", "address": address, "shards": "auto"}
    (project / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    env = project_env(project)
    store = project / "mlflow.db"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    run([str(BIN / "lrsched"), "generate", "--train", "data/train.csv", "--test", "data/test.csv"],
        project, env)  # fmt: skip
    started = time.monotonic()
    failed = subprocess.run(train_command(), cwd=project, env=env, capture_output=True, text=True)
    assert time.monotonic() - started < 30  # the process's start (torch, MLflow) included
    assert failed.returncode == 1, failed.stderr
    assert f"Error: cannot reach the Ray cluster at {address} (execution.address)" in (
        failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert not (project / "outputs").exists()
    assert not store.exists()  # the store was never opened: no run, not even an experiment
