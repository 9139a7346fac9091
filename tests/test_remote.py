"""Sharing exact outputs through a DVC remote (docs/sharing.md), for real, with a local remote.

One project runs the pipeline, commits, and pushes to a folder remote. A fresh `git clone` with an
empty cache of its own pulls, and must then hold the same bytes, see nothing changed, and run no
stage. The outputs marked `cache: false` in dvc.yaml are not pushed: they travel through git.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import GIT, copy_project, project_env, run

pytestmark = pytest.mark.pipeline

FOLDERS = ("data", "outputs", "figures")


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every output file under data/, outputs/, figures/: its sha256 and mtime (ns)."""
    found = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return found


def digests(found: dict[str, tuple[str, int]]) -> dict[str, str]:
    return {path: digest for path, (digest, _) in found.items()}


def outputs_by_cache(root: Path) -> tuple[list[str], list[str]]:
    """dvc.yaml's outputs (outs, metrics, plots), split into (cached, `cache: false`)."""
    cached, uncached = [], []
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                if isinstance(entry, str):
                    entry = {entry: {}}
                ((path, options),) = entry.items()
                (cached if (options or {}).get("cache", True) else uncached).append(path)
    return cached, uncached


def locked_md5s(root: Path) -> dict[str, str]:
    """Output path -> md5 as dvc.lock records it (a directory's ends in `.dir`)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}


def in_remote(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.fixture(scope="module")
def round_trip(reproduced, tmp_path_factory):
    base = tmp_path_factory.mktemp("remote")
    origin, remote, clone = base / "origin", base / "storage", base / "clone"
    origin = copy_project(reproduced["root"], origin)
    env = project_env(origin)
    record = {"origin": origin, "remote": remote, "clone": clone}

    # The author (the session's `dvc repro`, copied): commit the lock file and the git-tracked
    # outputs, add the remote, push.
    run([*GIT, "add", "-A"], origin, env)
    run([*GIT, "commit", "-qm", "first run"], origin, env)
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], origin, env)
    run([*GIT, "commit", "-qam", "the team's DVC remote"], origin, env)
    record["push"] = run(["dvc", "push"], origin, env).stdout
    record["tracked"] = run(["git", "ls-files"], origin, env).stdout.split()
    record["origin_files"] = snapshot(origin)

    # A teammate: a fresh clone, whose cache is its own and empty, pulls instead of re-running.
    run(["git", "clone", "-q", str(origin), str(clone)], base, env)
    record["cache_dir"] = run(["dvc", "cache", "dir"], clone, env).stdout.strip()
    record["cache_before_pull"] = (clone / ".dvc" / "cache").exists()
    record["before_pull"] = snapshot(clone)
    record["pull"] = run(["dvc", "pull"], clone, env).stdout
    record["pulled"] = snapshot(clone)
    record["status"] = json.loads(run(["dvc", "status", "--json"], clone, env).stdout)
    record["cloud"] = json.loads(run(["dvc", "status", "--cloud", "--json"], clone, env).stdout)
    record["repro"] = run(["dvc", "repro"], clone, env).stdout
    record["after_repro"] = snapshot(clone)
    record["git_status"] = run(["git", "status", "--porcelain"], clone, env).stdout
    return record


def test_the_clone_has_its_own_empty_cache(round_trip):
    clone = round_trip["clone"]
    assert Path(round_trip["cache_dir"]) == clone / ".dvc" / "cache"
    assert not round_trip["cache_before_pull"]
    cached, _ = outputs_by_cache(clone)
    before = round_trip["before_pull"]
    inside = tuple(f"{out}/" for out in cached)  # outputs/tuning/..., not outputs/tuning.json
    assert cached and not any(path in cached or path.startswith(inside) for path in before)


def test_pull_restores_every_output_byte_for_byte(round_trip):
    origin_files = digests(round_trip["origin_files"])
    assert len(origin_files) > 20  # data, 2 folders of per-schedule files, steps, reports, figures
    assert digests(round_trip["pulled"]) == origin_files


def test_after_pull_nothing_changed_and_repro_runs_nothing(round_trip):
    assert round_trip["status"] == {}  # workspace matches dvc.lock
    assert round_trip["cloud"] == {}  # cache and remote in sync
    output = round_trip["repro"]
    assert "Running stage" not in output
    for stage in yaml.safe_load((round_trip["clone"] / "dvc.yaml").read_text())["stages"]:
        assert f"Stage '{stage}' didn't change, skipping" in output
    assert "Data and pipelines are up to date." in output
    assert round_trip["after_repro"] == round_trip["pulled"]  # same bytes, same mtimes
    assert round_trip["git_status"] == ""


def test_cached_outputs_travel_through_the_remote(round_trip):
    origin, remote = round_trip["origin"], round_trip["remote"]
    cached, _ = outputs_by_cache(origin)
    md5s = locked_md5s(origin)
    for path in cached:
        assert in_remote(remote, md5s[path]), path
        assert path not in round_trip["tracked"], f"{path} is DVC's to share, not git's"


def test_cache_false_outputs_travel_through_git_not_the_remote(round_trip):
    origin, remote = round_trip["origin"], round_trip["remote"]
    _, uncached = outputs_by_cache(origin)
    assert {"outputs/metrics.json", "outputs/ranking.md", "outputs/report.md"} <= set(uncached)
    md5s = locked_md5s(origin)
    for path in uncached:
        assert not in_remote(remote, md5s[path]), f"{path} is not pushed by dvc push"
        assert path in round_trip["tracked"], f"{path} must be committed to reach a clone"
        # The clone has it from `git clone` already, before any `dvc pull`.
        assert round_trip["before_pull"][path][0] == round_trip["origin_files"][path][0]
