"""Time the train stage on the Ray engine against the local one, side by side.

    python scripts/benchmark_ray.py [--seeds N] [--repeat N] [--address HOST:PORT]

Two measurements, each a whole `lrsched train` process (start-up included) in a fresh copy of
the project with a fresh SQLite store:

- the sweeps: params.yaml with ``train.seeds`` = N (11 schedules x N seeds), local engine (one
  batch in this process) against the Ray engine (``execution.shards: auto``);
- the fixed overhead: params.yaml as it is (11 runs), local against Ray, the cluster up.

Without ``--address`` it starts its own cluster: two one-CPU nodes on this machine, in a
private network namespace (tests/clusters.py; needs root or user namespaces). Every Ray run's
outputs are compared with the local run's, byte for byte. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchmark import fresh_project, train_summary  # noqa: E402
from tests.test_faults import train_command, train_outputs  # noqa: E402

BIN = Path(sys.executable).parent
STORE_BYTES = 2_000_000_000


@contextlib.contextmanager
def cluster_at(address: str | None) -> Iterator[tuple[str, list[str], dict]]:
    """The cluster's address, a prefix that runs a command where the driver must run, and
    the environment to run it with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if address:
        yield address, [], env
        return
    from tests.clusters import two_nodes

    # Stores of Ray's usual size (it defaults to 30% of the memory): a sweep's results fit
    # without spilling to disk, as on a real cluster.
    with two_nodes(object_store_bytes=STORE_BYTES) as cluster:
        yield cluster.address, cluster.inside([]), cluster.env


def one_train(
    seeds: int, engine: str, address: str, prefix: list[str], env: dict
) -> tuple[float, str, dict[str, bytes]]:
    with tempfile.TemporaryDirectory(prefix="lrsched-bench-") as scratch:
        project = fresh_project(Path(scratch))
        document = yaml.safe_load((project / "params.yaml").read_text())
        document["train"]["seeds"] = seeds
        document["execution"] = {"engine": engine, "address": address, "shards": "auto"}
        (project / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
        generate = [str(BIN / "lrsched"), "generate", "--train", "data/train.csv"]
        subprocess.run([*generate, "--test", "data/test.csv"], cwd=project, env=env, check=True,
                       capture_output=True)  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(
            [*prefix, *train_command()], cwd=project, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"train ({engine}) failed:\n{done.stdout}\n{done.stderr}")
        return seconds, train_summary(done.stdout), train_outputs(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[600, 1800],
        help="seeds of each sweep (none: only the default params)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement")
    parser.add_argument("--address", help="a running cluster's HOST:PORT (default: start one)")
    arguments = parser.parse_args()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    rows = []
    with cluster_at(arguments.address) as (address, prefix, env):
        sizes = [("sweep", seeds) for seeds in arguments.seeds] + [("defaults", 1)]
        for label, seeds in sizes:
            times: dict[str, list[float]] = {"local": [], "ray": []}
            for _ in range(arguments.repeat):
                local, local_summary, local_outputs = one_train(seeds, "local", address, [], env)
                ray, ray_summary, ray_outputs = one_train(seeds, "ray", address, prefix, env)
                if ray_outputs != local_outputs:
                    sys.exit(f"{label}: the Ray engine's outputs differ from the local engine's")
                times["local"].append(local)
                times["ray"].append(ray)
                print(f"{label}, local: {local:.1f} s; {local_summary}", flush=True)
                print(f"{label}, ray:   {ray:.1f} s; {ray_summary}", flush=True)
            local, ray = (statistics.median(times[k]) for k in ("local", "ray"))
            rows.append((label, seeds, local, ray))
    print()
    print("| train | runs | local engine | Ray engine, 2 nodes x 1 CPU | speed-up | Ray - local |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seeds, local, ray in rows:
        print(f"| {label} | 11 x {seeds} | {local:.1f} s | {ray:.1f} s | {local / ray:.2f}x |"
              f" {ray - local:+.1f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
