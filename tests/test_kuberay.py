"""docker/kuberay.yaml, the KubeRay RayCluster, checked without a Kubernetes cluster.

The project's own pinned images at pyproject's version, the GPU workers asking for a GPU,
requests equal to limits, non-root, credentials only from a Secret, probes that minimal Ray
answers, and `ray start` commands that this Ray accepts, as KubeRay writes them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib

import pytest
import yaml

from tests.conftest import BIN, ROOT

MANIFEST = ROOT / "docker" / "kuberay.yaml"
DOCUMENTS = list(yaml.safe_load_all(MANIFEST.read_text()))
CLUSTER = DOCUMENTS[0]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
GROUPS = {
    "head": CLUSTER["spec"]["headGroupSpec"],
    **{group["groupName"]: group for group in CLUSTER["spec"]["workerGroupSpecs"]},
}
# What KubeRay adds to every `ray start` it writes (ray-operator/controllers/ray/common/pod.go).
KUBERAY_FLAGS = {
    "block": "true",
    "dashboard-agent-listen-port": "52365",
    "metrics-export-port": "8080",
}
# Flags KubeRay writes as --flag=false rather than dropping them.
BOOLEAN_VALUED = {"log-color", "include-dashboard", "include-log-monitor"}
CREDENTIAL = re.compile(r"PASSWORD|TOKEN|SECRET|USERNAME|CREDENTIAL|KEY", re.I)


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * units.get(unit, 1)


def test_one_raycluster_of_the_kuberay_v1_api():
    assert len(DOCUMENTS) == 1
    assert CLUSTER["apiVersion"] == "ray.io/v1" and CLUSTER["kind"] == "RayCluster"
    assert set(GROUPS) == {"head", "gpu", "driver"}


def test_images_are_the_projects_pinned_tags_at_its_version():
    cpu, gpu = f"lrsched:{VERSION}-cpu", f"lrsched:{VERSION}-gpu"
    for tag in (cpu, gpu):
        assert f"ARG LRSCHED_IMAGE={tag}" in DOCKERFILE, tag
    assert _container(GROUPS["head"])["image"] == cpu
    # The driver's environment must equal the workers' (the engine checks torch's build too).
    assert {_container(GROUPS[name])["image"] for name in ("gpu", "driver")} == {gpu}
    assert CLUSTER["metadata"]["labels"]["app.kubernetes.io/version"] == VERSION


def test_ray_version_is_the_ray_extras():
    (pin,) = PYPROJECT["project"]["optional-dependencies"]["ray"]
    assert pin == f"ray=={CLUSTER['spec']['rayVersion']}"
    assert pin in (ROOT / "requirements" / "ray.txt").read_text().splitlines()


def test_the_gpu_workers_ask_for_a_gpu_and_only_they_do():
    for name, group in GROUPS.items():
        resources = _container(group)["resources"]
        gpus = resources["limits"].get("nvidia.com/gpu", 0)
        assert gpus == (1 if name == "gpu" else 0), name
        assert group["rayStartParams"].get("num-gpus", str(gpus)) == str(gpus), name


def test_requests_equal_limits_and_ray_counts_what_the_pod_has():
    for name, group in GROUPS.items():
        resources = _container(group)["resources"]
        assert resources["requests"] == resources["limits"], name
        cpus = group["rayStartParams"]["num-cpus"]
        # Only the workers train: the head and the driver offer Ray no CPU.
        assert cpus == (resources["limits"]["cpu"] if name == "gpu" else "0"), name


def test_every_pod_runs_as_the_images_non_root_user():
    assert DOCKERFILE.count("USER 10001:10001") == 2
    for name, group in GROUPS.items():
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        container = spec["containers"][0]["securityContext"]
        assert container["allowPrivilegeEscalation"] is False, name
        assert container["capabilities"]["drop"] == ["ALL"], name


def test_credentials_come_only_from_a_secret():
    assert "kind: Secret" not in MANIFEST.read_text()
    found, holders = {}, set()
    for name, group in GROUPS.items():
        for variable in _container(group).get("env", []):
            if CREDENTIAL.search(variable["name"]) or variable["name"] == "MLFLOW_TRACKING_URI":
                assert "value" not in variable, (name, variable["name"])
                found[variable["name"]] = variable["valueFrom"]["secretKeyRef"]
                holders.add(name)
            else:
                assert "@" not in variable.get("value", ""), (name, variable["name"])
    assert set(found) == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    assert {ref["name"] for ref in found.values()} == {"lrsched-mlflow"}
    assert holders == {"driver"}  # the one process that talks to MLflow


def test_probes_ask_what_minimal_ray_opens():
    """KubeRay's own probes ask the dashboard agent, which minimal Ray does not run: every
    container brings TCP probes on the GCS (head) or its raylet's fixed port (workers)."""
    assert GROUPS["head"]["rayStartParams"]["include-dashboard"] == "false"
    assert not CLUSTER["spec"]["enableInTreeAutoscaling"]
    for name, group in GROUPS.items():
        container = _container(group)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        params = group["rayStartParams"]
        expected = int(params.get("port", 6379) if name == "head" else params["node-manager-port"])
        for probe in ("readinessProbe", "livenessProbe"):
            assert set(container[probe]) - {
                "initialDelaySeconds", "periodSeconds", "failureThreshold", "timeoutSeconds"
            } == {"tcpSocket"}, (name, probe)  # fmt: skip
            assert ports[container[probe]["tcpSocket"]["port"]] == expected, (name, probe)


def _ray_start(name: str, group: dict) -> list[str]:
    """The `ray start` KubeRay writes for the group: its params, KubeRay's own, as flags."""
    limits = _container(group)["resources"]["limits"]
    params = {**KUBERAY_FLAGS, "memory": str(_bytes(limits["memory"])), **group["rayStartParams"]}
    if name == "head":
        params.setdefault("dashboard-host", "0.0.0.0")
    else:
        params.setdefault("address", "lrsched-head-svc.default.svc.cluster.local:6379")
    flags = ["--head"] if name == "head" else []
    for key, value in sorted(params.items()):
        if value.lower() not in ("true", "false") or key in BOOLEAN_VALUED:
            flags.append(f"--{key}={value}")
        elif value.lower() == "true":
            flags.append(f"--{key}")
    return flags


# In the venv's Python: every option `ray start` declares (KubeRay's --memory is one that
# its --help hides), then the command parsed as `ray start` parses it, types too, starting nothing.
PARSE = """
import json, sys
from ray.scripts.scripts import start
print(json.dumps([name for param in start.params for name in param.opts + param.secondary_opts]))
start.make_context("start", sys.argv[1:])
"""


@pytest.mark.cluster
def test_ray_start_accepts_each_groups_command():
    if not (BIN / "ray").exists():
        if os.environ.get("CI"):
            pytest.fail("ray is missing (requirements/ray.txt)")
        pytest.skip("ray is not installed (pip install -r requirements/ray.txt)")
    for name, group in GROUPS.items():
        flags = _ray_start(name, group)
        parsed = subprocess.run(
            [str(BIN / "python"), "-c", PARSE, *flags], capture_output=True, text=True
        )
        assert parsed.returncode == 0, (name, flags, parsed.stderr)
        declared = set(json.loads(parsed.stdout.splitlines()[0]))
        assert {flag.split("=")[0] for flag in flags} <= declared, name
