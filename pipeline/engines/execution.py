"""Where the stages train: in this machine's processes, or as Ray tasks on a cluster.

A stage hands its training to an engine as units: a shard of the train stage's runs
(:mod:`pipeline.engines.shards`), a tuning workload (:mod:`pipeline.comparison.tuning`).
Each unit is a plain
function of picklable arguments that returns its numbers; the stage's own process (the driver)
is the only one that writes files or talks to MLflow. A unit's numbers do not depend on where it
ran or on what ran beside it, so the engine and the cut change no output byte
(tests/test_execution.py, tests/test_ray_cluster.py).

``ray`` is imported only by :class:`RayEngine`: the local engine, ``import pipeline`` and
``lrsched --help`` never import it (it is an optional dependency: ``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.config.params import ExecutionParams, Params
from pipeline.engines import units
from pipeline.engines.units import Progress

PACKAGE = Path(__file__).resolve().parent
CONNECT_TIMEOUT_S = 5.0  # an unreachable head is reported within this, before any work
RETRIES = 3  # each unit, when its worker or node dies (a unit that raises is not retried)
_WAIT_S = 0.2  # how often the driver wakes while units run: progress, and the store's health
WARM_WAIT_S = 60.0  # the longest the first units wait for the workers warming for them
# A batch's steps cost a fixed ~2 ms each on CPU besides ~15 us per replicate (measured:
# docs/cluster.md#speed): from 8,000 replicates on, that overhead is under 2% of a shard.
MIN_SHARD = 8000
SHARDS_PER_CPU = 4


class ExecutionError(RuntimeError):
    """The engine cannot run: Ray missing, the cluster unreachable, nodes that differ."""


@dataclass(frozen=True)
class Placement:
    """Where a unit trained: a Ray node's id (or this host's name) and its address."""

    node: str
    address: str


class Mapper(Protocol):
    placements: list[Placement]  # of the last ``map``'s units, in their order

    def map(
        self,
        function: Callable[..., Any],
        arguments: Sequence[tuple[Any, ...]],
        costs: Sequence[float],
    ) -> list[Any]: ...


class Engine(Protocol):
    name: str
    device: str  # the device the units train on: "cpu" or "cuda"

    def shard_count(self, setting: int | str, replicates: int, steps: int) -> int: ...

    def warm_up(self, units: int, module: str) -> None:
        """Get ready for ``units`` units that run code from ``module``; returns at once."""
        ...

    def pool(self, workers: int, progress: Progress) -> contextlib.AbstractContextManager[Mapper]:
        """``map`` calls ``function(*arguments, progress)`` for each unit, in parallel."""
        ...

    def tags(self) -> dict[str, str]: ...


def here() -> Placement:
    return Placement(socket.gethostname(), "local")


class LocalEngine:
    """This machine: one process, or one single-threaded process per unit up to ``workers``."""

    name = "local"

    def __init__(self, device: str) -> None:
        self.device = device

    def shard_count(self, setting: int | str, replicates: int, steps: int) -> int:
        return 1 if setting == "auto" else int(setting)

    def warm_up(self, units: int, module: str) -> None:
        pass  # its processes start with the pool, and inherit nothing to import ahead

    @contextlib.contextmanager
    def pool(self, workers: int, progress: Progress) -> Iterator[Mapper]:
        with units.Pool(workers, progress) as pool:
            yield _LocalMapper(pool)

    def tags(self) -> dict[str, str]:
        return {"execution.engine": "local"}


class _LocalMapper:
    def __init__(self, pool: units.Pool) -> None:
        self.pool = pool
        self.placements: list[Placement] = []

    def map(
        self,
        function: Callable[..., Any],
        arguments: Sequence[tuple[Any, ...]],
        costs: Sequence[float],
    ) -> list[Any]:
        self.placements = [here()] * len(arguments)
        return self.pool.map(function, arguments, costs)


def connect(execution: ExecutionParams, device_setting: str) -> Engine:
    """The engine ``execution`` names, ready: for ``ray``, connected to its cluster, or an
    :class:`ExecutionError` within seconds that says what is wrong (nothing is started)."""
    if execution.engine == "local":
        from pipeline.trainer.runtime import select_device

        return LocalEngine(select_device(device_setting).type)
    return RayEngine(resolve_address(execution.address), device_setting)


@contextlib.contextmanager
def connected(execution: ExecutionParams, device_setting: str) -> Iterator[Engine]:
    """:func:`connect`, and for Ray, the driver's connection closed when the stage ends."""
    engine = connect(execution, device_setting)
    try:
        yield engine
    finally:
        if isinstance(engine, RayEngine):
            engine.close()


@contextlib.contextmanager
def joined(params: Params, tune_workloads: int | None = None) -> Iterator[Engine]:
    """:func:`connected`, with a worker warming for each unit the stage will run at once: one
    per workload for tune (``tune_workloads``), one per shard for train (None).

    ``params`` may be read without their schedules (``load_params(..., "skip")``), so that the
    stage joins before it imports torch: a cluster's workers then start while it does.
    """
    with connected(params.execution, params.train.device) as engine:
        if tune_workloads is None:
            engine.warm_up(train_shards(engine, params), "pipeline.engines.shards")
        else:
            engine.warm_up(tune_workloads, "pipeline.comparison.tuning")
        yield engine


def train_shards(engine: Engine, params: Params) -> int:
    """How many shards ``engine`` cuts train's runs into: what it warms workers for, what the
    stage announces and what it trains."""
    return engine.shard_count(params.execution.shards, params.replicate_count, params.train.epochs)


def resolve_address(setting: str) -> str:
    """``auto``: $RAY_ADDRESS, else the cluster ``ray start --head`` started on this host."""
    if setting != "auto":
        return setting
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    # Where `ray start --head` leaves its address; Ray's own "auto" reads the same file.
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    current = Path(base) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        address = current.read_text().strip()
        if address:
            return address
    raise ExecutionError(
        "execution.address is 'auto', but RAY_ADDRESS is not set and no Ray cluster was "
        "started on this host; start one (`ray start --head`) or set execution.address to "
        "the HOST:PORT of a cluster's head"
    )


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast where nothing listens: Ray's own connect retries for a minute or more."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ExecutionError(
            f"cannot reach the Ray cluster at {address} (execution.address): {reason}. "
            "Is its head up (`ray status --address " + address + "`)?"
        ) from None


def code_digest(package: Path = PACKAGE) -> str:
    """sha256 of the package's Python sources: the driver's and each worker's must agree."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def environment() -> dict[str, str]:
    """What a unit's numbers depend on besides its arguments: versions, code, CPU path."""
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "code": code_digest(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
    }


def cpu_shards(replicates: int, cpus: int, steps: int) -> int:
    """How many shards ``replicates`` of ``steps`` updates each are cut into for ``cpus``
    CPUs. A small sweep takes fewer shards than CPUs, as many as :func:`units.worth_workers`
    allows; a larger one as many per CPU, one, or more where the sweep is large (up
    to :data:`SHARDS_PER_CPU`, none under :data:`MIN_SHARD` replicates or that many updates),
    so that a faster or less busy node takes more of them and the sweep does not wait on the
    slowest."""
    worth_a_worker = units.worth_workers(replicates * steps)
    if worth_a_worker < cpus:
        return min(worth_a_worker, replicates)
    per_cpu = min(replicates // MIN_SHARD, worth_a_worker) // cpus
    return cpus * max(1, min(SHARDS_PER_CPU, per_cpu))


class RayEngine:
    """Units as Ray tasks on the cluster at ``address``, each with one CPU (or one GPU), each
    retried when its worker or node dies. The driver's code travels with the job
    (``py_modules``), so every node runs exactly the code DVC hashed."""

    name = "ray"

    def __init__(self, address: str, device_setting: str) -> None:
        probe(address)
        try:
            import ray
        except ImportError:
            raise ExecutionError(
                "execution.engine is 'ray', but Ray is not installed here: "
                "pip install -e '.[ray]' (the project's images have it)"
            ) from None
        import logging

        self.address, self.ray = address, ray
        started = time.perf_counter()
        portable = {key: os.environ[key] for key in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
        try:
            ray.init(
                address=address,
                namespace="lrsched",
                logging_level=logging.ERROR,
                log_to_driver=False,
                runtime_env={"py_modules": [str(PACKAGE)], "env_vars": portable},
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ExecutionError(
                f"cannot join the Ray cluster at {address}: {error}\nA driver runs on a node "
                f"of its cluster: on this machine, `ray start --address={address} "
                "--num-cpus=0` first, or run the stage on the head (docs/cluster.md)"
            ) from None
        self.connect_seconds = time.perf_counter() - started
        resources = ray.cluster_resources()
        self.cpus, self.gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if device_setting == "cuda" and not self.gpus:
            ray.shutdown()
            raise ExecutionError(
                f"train.device is 'cuda', but the Ray cluster at {address} has no GPU; "
                "use cpu or auto"
            )
        # auto: the GPUs where the cluster has any, so that every unit trains on one kind.
        self.device = "cpu" if device_setting == "cpu" or not self.gpus else "cuda"
        if not (self.gpus if self.device == "cuda" else self.cpus):
            ray.shutdown()
            raise ExecutionError(f"the Ray cluster at {address} has no {self.device.upper()}")
        self.warming: list[Any] = []  # the warm-ups not yet waited for: none until warm_up

    def warm_up(self, units: int, module: str) -> None:
        """Start a worker for each unit that can run at once (up to a CPU or GPU each), which
        imports ``module``, while the driver prepares the stage; not waited for here. A
        worker's start is seconds of CPU (Ray's worker, then torch): no more start than the
        units will use, and the first units go where they started (:meth:`warm_nodes`)."""
        warm = self.ray.remote(_warm).options(**self.unit_resources)
        slots = self.gpus if self.device == "cuda" else self.cpus
        self.warming = [warm.remote(module) for _ in range(min(units, slots))]

    def warm_nodes(self) -> list[str]:
        """The nodes of the workers :meth:`warm_up` started, once they are ready (a warm-up
        that failed or is still starting after :data:`WARM_WAIT_S` is left out), each once
        per worker; empty after the first call."""
        warming, self.warming = self.warming, []
        if not warming:
            return []
        ready, _ = self.ray.wait(warming, num_returns=len(warming), timeout=WARM_WAIT_S)
        nodes = []
        for reference in ready:
            with contextlib.suppress(self.ray.exceptions.RayError):
                nodes.append(self.ray.get(reference))
        return nodes

    @property
    def unit_resources(self) -> dict[str, int]:
        """What each unit (and each warm-up) asks of the cluster: one GPU, or one CPU."""
        return {"num_gpus": 1} if self.device == "cuda" else {"num_cpus": 1}

    def shard_count(self, setting: int | str, replicates: int, steps: int) -> int:
        """``auto``: a shard per GPU, or :func:`cpu_shards` on CPUs."""
        if setting != "auto":
            return int(setting)
        if self.device == "cuda":
            return self.gpus
        return cpu_shards(replicates, self.cpus, steps)

    @contextlib.contextmanager
    def pool(self, workers: int, progress: Progress) -> Iterator[Mapper]:
        yield _RayMapper(self, progress)

    def tags(self) -> dict[str, str]:
        return {"execution.engine": "ray", "execution.address": self.address}

    def close(self) -> None:
        self.ray.shutdown()

    @functools.cached_property
    def expected(self) -> dict[str, str]:
        """The driver's :func:`environment`: asked for once the first unit returns, since it
        imports torch, which the warm-ups must not wait for."""
        return environment()

    def check(self, placement: Placement, found: dict[str, str]) -> None:
        differ = {key: (found.get(key), value) for key, value in self.expected.items()}
        differ = {key: pair for key, pair in differ.items() if pair[0] != pair[1]}
        if differ:
            described = "; ".join(
                f"{key} {w!r} there, {d!r} here" for key, (w, d) in differ.items()
            )
            raise ExecutionError(
                f"Ray node {placement.node} ({placement.address}) differs from the driver: "
                f"{described}. Run every node from the same image (docs/cluster.md)"
            )


def _warm(module: str) -> str:
    """In a new Ray worker: import what the units run (torch, the training code) and set
    torch up as each unit does (its first deterministic mode imports torch's compiler config:
    0.7 s); its node."""
    import ray

    from pipeline.trainer.runtime import make_deterministic

    importlib.import_module(module)
    make_deterministic()
    return str(ray.get_runtime_context().get_node_id())


def _run_unit(function: Callable[..., Any], arguments: tuple[Any, ...]) -> tuple[Any, ...]:
    """In a Ray worker: the unit, its progress count, where it ran and what it ran with."""
    import ray

    from pipeline.trainer.runtime import make_deterministic

    make_deterministic()
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        done += count

    result = function(*arguments, progress)
    context = ray.get_runtime_context()
    placement = Placement(context.get_node_id(), ray.util.get_node_ip_address())
    return result, done, placement, environment()


class _RayMapper:
    def __init__(self, engine: RayEngine, progress: Progress) -> None:
        self.engine, self.progress = engine, progress
        self.placements: list[Placement] = []

    def map(
        self,
        function: Callable[..., Any],
        arguments: Sequence[tuple[Any, ...]],
        costs: Sequence[float],
    ) -> list[Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.engine.ray
        unit = ray.remote(_run_unit)
        retried = {"max_retries": RETRIES, "retry_exceptions": False}
        # The costliest first, as the local pool does: the last to finish is a short one. Each
        # of the first goes to a warm worker's node, where that worker is idle: left to Ray, a
        # unit would take any free CPU and start a new worker there. `soft`: a retried unit
        # whose node died goes elsewhere.
        order = sorted(range(len(arguments)), key=lambda i: -costs[i])
        warm = [NodeAffinitySchedulingStrategy(n, soft=True) for n in self.engine.warm_nodes()]
        index_of = {}
        for k, i in enumerate(order):
            placed = {"scheduling_strategy": warm[k]} if k < len(warm) else {}
            options = unit.options(**retried, **self.engine.unit_resources, **placed)
            index_of[options.remote(function, arguments[i])] = i
        pending, results = list(index_of), [None] * len(arguments)
        placements: list[Placement | None] = [None] * len(arguments)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=_WAIT_S)
                for reference in ready:
                    try:
                        result, done, placement, found = ray.get(reference)
                    except ray.exceptions.RayTaskError as error:
                        raise error.as_instanceof_cause() from None
                    self.engine.check(placement, found)
                    # A copy, and the reference dropped: the arrays Ray hands over are views of
                    # its object store, which would otherwise hold every shard's result until
                    # the merge (and spill them to disk when full).
                    index = index_of.pop(reference)
                    results[index], placements[index] = copy.deepcopy(result), placement
                    del result
                    self.progress(done)
                self.progress(0)  # the driver's own checks (the store's health) run meanwhile
        finally:
            for reference in pending:  # a failure, or the stage interrupted: stop the rest
                ray.cancel(reference, force=True)
        self.placements = [p for p in placements if p is not None]
        return results


def node_list(placements: Sequence[Placement]) -> str:
    """The nodes of some units, each once, in a stable order: an MLflow tag's value."""
    return ",".join(sorted({placement.node for placement in placements}))
