"""The tutorial's data: scikit-learn's two moons, plus a held-out test set of its own seed."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import files

HEADER = ("x1", "x2", "label")
SET_KEYS = ("seed", "noise")


@dataclass(frozen=True)
class Dataset:
    features: np.ndarray  # (n, 2) float64, as make_moons returns them
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)


def generate(n_samples: int, noise: float, seed: int) -> Dataset:
    # Imported here: scikit-learn takes 2 s to import, and train and plot only read CSVs.
    from sklearn.datasets import make_moons

    features, labels = make_moons(n_samples, noise=noise, random_state=seed)
    return Dataset(features.astype(np.float64), labels.astype(np.int64))


def write_sets(datasets: dict[tuple[int, float], Dataset], path: str | Path) -> None:
    """Data sets of several (seed, noise) pairs in one CSV, ``seed,noise,x1,x2,label``.

    Floats are written with repr(): the shortest text that reads back to the same float, so the
    files are exact and byte-stable.
    """
    rows = (
        (seed, repr(noise), repr(x1), repr(x2), label)
        for (seed, noise), dataset in datasets.items()
        for (x1, x2), label in zip(dataset.features.tolist(), dataset.labels.tolist(), strict=True)
    )
    files.write_text(path, files.csv_text(SET_KEYS + HEADER, rows))


def read_sets(path: str | Path) -> dict[tuple[int, float], Dataset]:
    """What :func:`write_sets` wrote, keyed by (seed, noise), in the same order."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != SET_KEYS + HEADER:
        raise ValueError(f"{path}: expected a CSV with header {','.join(SET_KEYS + HEADER)}")
    grouped: dict[tuple[int, float], list[list[str]]] = {}
    for row in rows[1:]:
        grouped.setdefault((int(row[0]), float(row[1])), []).append(row[2:])
    return {
        key: Dataset(
            np.array([[float(r[0]), float(r[1])] for r in body], dtype=np.float64).reshape(-1, 2),
            np.array([int(r[2]) for r in body], dtype=np.int64),
        )
        for key, body in grouped.items()
    }


def read_test_sets(path: str | Path) -> dict[float, Dataset]:
    """The test sets :func:`write_sets` wrote (one seed), keyed by their noise level."""
    return {noise: dataset for (_, noise), dataset in read_sets(path).items()}
