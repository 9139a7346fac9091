"""Stage ``generate``: the train and test sets from params."""

from __future__ import annotations

from pathlib import Path

from pipeline import data, workloads
from pipeline.params import Params


def run(params: Params, train_path: Path, test_path: Path) -> dict[str, int]:
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
    return {
        "train": params.data.n_samples,
        "seeds": len(params.seeds),
        "noise levels": len(noises),
        "test": test.n_samples,
    }


def write_workloads(params: Params, path: Path) -> list[str]:
    """Every workload's train, validation and test sets at ``seed``, for the tune stage."""
    workloads.write_splits(workloads.generate_all(params.workloads, params.seed), path)
    return [workload.name for workload in params.workloads]
