"""Stage ``generate``: the train and test sets from params."""

from __future__ import annotations

from pathlib import Path

from pipeline import data
from pipeline.params import Params


def run(params: Params, train_path: Path, test_path: Path) -> dict[str, int]:
    """One train set per seed (its noise drawn from that seed), one shared test set."""
    train_sets = {
        seed: data.generate(params.data.n_samples, params.data.noise, seed) for seed in params.seeds
    }
    test_set = data.generate(params.data.test.n_samples, params.data.noise, params.data.test.seed)
    data.write_seeded(train_sets, train_path)
    data.write(test_set, test_path)
    return {"train": params.data.n_samples, "seeds": len(train_sets), "test": len(test_set)}
