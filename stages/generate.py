"""Stage ``generate``: the train and test sets from params."""

from __future__ import annotations

from pathlib import Path

from pipeline import data
from pipeline.params import Params


def run(params: Params, train_path: Path, test_path: Path) -> dict[str, int]:
    train_set = data.generate(params.data.n_samples, params.data.noise, params.seed)
    test_set = data.generate(params.data.test.n_samples, params.data.noise, params.data.test.seed)
    data.write(train_set, train_path)
    data.write(test_set, test_path)
    return {"train": len(train_set), "test": len(test_set)}
