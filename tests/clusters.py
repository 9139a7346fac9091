"""A real two-node Ray cluster for the tests, inside a private network namespace.

Ray advertises the machine's interface address even when told 127.0.0.1 (Ray issues 26293 and
59110). In a namespace of its own with only loopback up, 127.0.0.1 is the only address there
is, so the head, the worker, the driver and its store all talk over loopback, and nothing
leaves the machine. A process holds the namespace open; every command enters it (``nsenter``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.conftest import BIN
from tests.servers import require

HEAD_PORT = 6379
WORKER_NODE_MANAGER_PORT = 6390  # how the tests find (and kill) the worker node's raylet


def available() -> None:
    """Skip (fail in CI) where the cluster cannot be made: no Ray, or no namespaces."""
    require("ray (pip install -e '.[ray]')", (BIN / "ray").exists())
    require("unshare and nsenter (util-linux)", bool(shutil.which("unshare")))
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    require("network namespaces (unshare --net: root or user namespaces)", probe.returncode == 0)


@dataclass
class Cluster:
    holder: subprocess.Popen
    temp_dir: Path
    env: dict[str, str]
    object_store_bytes: int = 100_000_000  # per node; Ray's default is 30% of the memory

    @property
    def address(self) -> str:
        return f"127.0.0.1:{HEAD_PORT}"

    def inside(self, command: list[str]) -> list[str]:
        """``command`` as run in the cluster's network namespace."""
        return ["nsenter", "--target", str(self.holder.pid), "--net", "--", *command]

    def run(self, command: list[str], **options) -> subprocess.CompletedProcess:
        options.setdefault("env", self.env)
        return subprocess.run(
            self.inside(command), capture_output=True, text=True, check=False, **options
        )

    def popen(self, command: list[str], **options) -> subprocess.Popen:
        options.setdefault("env", self.env)
        return subprocess.Popen(self.inside(command), **options)

    def ray_start(self, *flags: str) -> None:
        started = self.run(
            [
                str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                f"--object-store-memory={self.object_store_bytes}", *flags,
            ]
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr

    def start_worker(self) -> None:
        self.ray_start(
            f"--address={self.address}",
            f"--node-manager-port={WORKER_NODE_MANAGER_PORT}",
            "--object-manager-port=6391",
            "--min-worker-port=11000",
            "--max-worker-port=11999",
        )

    def nodes(self) -> dict[str, bool]:
        """Every node's id, and whether it is alive."""
        script = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR');"
            "print(json.dumps({n['NodeID']: n['Alive'] for n in ray.nodes()}))"
        )
        listed = self.run([str(BIN / "python"), "-c", script])
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout.strip().splitlines()[-1])

    def _raylet(self, worker: bool) -> psutil.Process | None:
        """This cluster's raylet of the worker node (or the head's): its command names this
        cluster's folder, and the worker's its fixed port."""
        port = f"--node_manager_port={WORKER_NODE_MANAGER_PORT}"
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or ())
            ours = "raylet/raylet" in cmdline and str(self.temp_dir) in cmdline
            if ours and (port in cmdline) == worker:
                return process
        return None

    def worker_processes(self) -> list[psutil.Process]:
        """The worker node's raylet and everything it started (its Ray workers)."""
        raylet = self._raylet(worker=True)
        return [] if raylet is None else [raylet, *raylet.children(recursive=True)]

    def kill_worker_node(self) -> None:
        """The worker node dies at once, as when its machine goes away."""
        for process in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

    def running_units(self) -> dict[str, list[psutil.Process]]:
        """This cluster's Ray workers running a unit of work now, by node: "worker" or "head"."""
        found: dict[str, list[psutil.Process]] = {"worker": [], "head": []}
        for node in found:
            raylet = self._raylet(worker=node == "worker")
            with contextlib.suppress(psutil.NoSuchProcess, AttributeError):
                for process in raylet.children(recursive=True):  # type: ignore[union-attr]
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if " ".join(process.cmdline()).startswith("ray::_run_unit"):
                            found[node].append(process)
        return found


@contextlib.contextmanager
def two_nodes(
    worker_niceness: int | None = None,
    object_store_bytes: int = 100_000_000,
    prompt_death: bool = False,
) -> Iterator[Cluster]:
    """A head and a worker, one CPU each, in a fresh namespace; all of it gone afterwards.
    ``worker_niceness``: the nice value of the Ray workers (Ray's default: 15);
    ``object_store_bytes``: each node's object store (small by default: the tests' results are);
    ``prompt_death``: the head declares a silent node dead after about 5 s, not Ray's 15 to 30
    (a health check a second, 2 s to answer, 3 missed in a row): for a test that kills one."""
    available()
    holder = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep infinity"],
        start_new_session=True,
    )
    # A short path: Ray's Unix sockets live under it, and a socket path has at most 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        DVC_NO_ANALYTICS="1",
    )
    if worker_niceness is not None:
        env["RAY_worker_niceness"] = str(worker_niceness)
    if prompt_death:  # Ray's config, read from RAY_<name> when each process starts
        env.update(
            RAY_health_check_period_ms="1000",
            RAY_health_check_timeout_ms="2000",
            RAY_health_check_failure_threshold="3",
        )
    cluster = Cluster(holder, temp_dir, env, object_store_bytes)
    try:
        deadline = time.monotonic() + 10
        while "UP" not in cluster.run(["ip", "-o", "link", "show", "lo"]).stdout:
            assert time.monotonic() < deadline, "loopback did not come up in the namespace"
            time.sleep(0.05)
        cluster.ray_start("--head", f"--port={HEAD_PORT}", "--include-dashboard=false")
        cluster.start_worker()
        yield cluster
    finally:
        # Not `ray stop`, which stops every Ray process on the machine: only this cluster's, the
        # processes that name its folder and what they started (Ray workers, agents).
        ours = []
        for process in psutil.process_iter(["cmdline"]):
            if str(temp_dir) in " ".join(process.info["cmdline"] or ()):
                with contextlib.suppress(psutil.NoSuchProcess):
                    ours += [process, *process.children(recursive=True)]
        for process in ours:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        if not os.environ.get("LRSCHED_KEEP_RAY_LOGS"):  # to read what the nodes logged
            shutil.rmtree(temp_dir, ignore_errors=True)
