"""The train stage's runs cut into shards, each one batched computation, and merged back.

A replicate's numbers do not depend on which others share its batch (every operation of the
batch is per replicate; tests/test_execution.py checks it bit for bit), so the cut only decides
what trains where. Replicates are dealt round-robin: the schedules that cost more per step
(ReduceLROnPlateau steps a torch scheduler per replicate) spread over every shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config.params import Params
from pipeline.engines.units import Progress
from pipeline.problems.data import Dataset
from pipeline.trainer.batch import BatchResult, Replicate, Setup
from pipeline.trainer.batched import replicate_finals, train_batch

Key = tuple[str, int]  # a replicate by its run's name and its seed


def cut(count: int, shards: int) -> list[list[int]]:
    """Replicate indices ``0..count-1`` dealt to at most ``shards`` non-empty shards."""
    shards = max(1, min(shards, count))
    return [list(range(first, count, shards)) for first in range(shards)]


def replicates(params: Params, keys: Sequence[Key]) -> list[Replicate]:
    """The replicates named by ``keys``, built from params in the process that trains them:
    a schedule's compiled rules (LambdaLR) are closures, which do not pickle."""
    runs = {run.name: run for run in params.runs}
    return [
        Replicate(runs[name].spec, seed, runs[name].point.lr, runs[name].point.noise)
        for name, seed in keys
    ]


@dataclass(frozen=True)
class ShardResult:
    """A shard's numbers, as numpy arrays only: they cross to the driver without pickling a
    tensor or a dict per replicate (Ray hands numpy arrays over without a copy)."""

    rates: np.ndarray  # (replicates, epochs, 2)
    losses: np.ndarray  # (replicates, epochs)
    batch_sizes: np.ndarray  # (replicates, epochs)
    weights: dict[str, np.ndarray]  # parameter name -> (replicates, ...) float32
    finals: dict[str, np.ndarray]  # metric -> (replicates,) float64


def train_shard(
    params: Params,
    keys: Sequence[Key],
    datasets: Mapping[tuple[int, float], Dataset],
    test_sets: Mapping[float, Dataset],
    device: str,
    progress: Progress,
) -> ShardResult:
    """One shard as one batch, and each replicate's final metrics (the driver would otherwise
    compute them one by one); ``progress`` counts replicate-updates."""
    import torch

    from pipeline.trainer.runtime import make_deterministic

    make_deterministic()
    count = len(keys)
    batch = train_batch(
        replicates(params, keys),
        Setup.of(params),
        datasets,
        torch.device(device),
        on_step=lambda step: progress(count),
    )
    network = params.architecture
    finals = [replicate_finals(batch, i, network, datasets, test_sets) for i in range(count)]
    names = list(batch.state_dicts[0])
    return ShardResult(
        rates=batch.rates,
        losses=batch.losses,
        batch_sizes=batch.batch_sizes,
        weights={
            name: torch.stack([state[name] for state in batch.state_dicts]).numpy()
            for name in names
        },
        finals={key: np.array([row[key] for row in finals]) for key in finals[0]},
    )


def merge(
    parts: Sequence[ShardResult],
    groups: Sequence[Sequence[int]],
    everyone: Sequence[Replicate],
) -> BatchResult:
    """One batch of ``everyone`` from its shards: replicate ``groups[s][j]`` is ``parts[s]``'s
    ``j``-th."""
    import torch

    order = np.argsort(np.concatenate([np.asarray(group) for group in groups]), kind="stable")

    def stacked(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays)[order]

    weights = {name: stacked([p.weights[name] for p in parts]) for name in parts[0].weights}
    finals = {key: stacked([p.finals[key] for p in parts]) for key in parts[0].finals}
    return BatchResult(
        replicates=tuple(everyone),
        rates=stacked([p.rates for p in parts]),
        losses=stacked([p.losses for p in parts]),
        state_dicts=tuple(
            {name: torch.from_numpy(values[i]) for name, values in weights.items()}
            for i in range(len(everyone))
        ),
        batch_sizes=stacked([p.batch_sizes for p in parts]),
        finals=tuple(
            {key: float(values[i]) for key, values in finals.items()} for i in range(len(everyone))
        ),
    )
