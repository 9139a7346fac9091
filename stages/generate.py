"""Stage ``generate``: the train and test sets from params."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.params import Params
from pipeline.problems import data, workloads


@dataclass(frozen=True)
class SetSizes:
    """What generate wrote: points per train set, seeds, noise levels, points per test set."""

    train: int
    seeds: int
    noise_levels: int
    test: int


def run(params: Params, train_path: Path, test_path: Path) -> SetSizes:
    """A train set per seed and noise level (the seed draws its noise), a test set per noise.

    The test set has a seed of its own, shared by every run at a noise level: runs differ only
    in what they trained on.
    """
    noises = sorted({point.noise for point in params.grid})
    train_sets = {
        (seed, noise): data.generate(params.data.n_samples, noise, seed)
        for noise in noises
        for seed in params.seeds
    }
    test = params.data.test
    test_sets = {
        (test.seed, noise): data.generate(test.n_samples, noise, test.seed) for noise in noises
    }
    data.write_sets(train_sets, train_path)
    data.write_sets(test_sets, test_path)
    return SetSizes(params.data.n_samples, len(params.seeds), len(noises), test.n_samples)


def write_workloads(suite: Sequence[workloads.Workload], seed: int, path: Path) -> list[str]:
    """Every workload's train, validation and test sets at ``seed``, for the tune stage."""
    workloads.write_splits(workloads.generate_all(suite, seed), path)
    return [workload.name for workload in suite]
