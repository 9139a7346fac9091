"""Mini-batches for the ``batch_size`` schedule: the tutorial's alternative to decaying the rate.

The rate stays at ``train.lr``; update ``i`` trains on ``initial * factor ** (i // every)``
points (at most the whole train set), drawn without replacement from a shuffled pass over the
data; a pass too short for the next batch is dropped and a new shuffle starts. The draw depends
only on the run's seed, so the batched trainer and its torch twin see the same batches.
"""

from __future__ import annotations

import numpy as np

from pipeline.schedules.specs import ScheduleSpec


def sizes(spec: ScheduleSpec, epochs: int, samples: int) -> np.ndarray:
    """The batch size of every update, (epochs,) int64."""
    kwargs = spec.kwargs
    growth = np.float64(kwargs["factor"]) ** (np.arange(epochs) // kwargs["every"])
    return np.minimum(samples, np.floor(kwargs["initial"] * growth)).astype(np.int64)


class Sampler:
    """The indices of each update's mini-batch, in order."""

    def __init__(self, spec: ScheduleSpec, epochs: int, samples: int, seed: int) -> None:
        self.sizes = sizes(spec, epochs, samples)
        self.samples = samples
        # A stream of its own: drawing batches must not shift torch's or make_moons' draws.
        self._rng = np.random.default_rng([seed, 0xBA7C])
        self._order = self._rng.permutation(samples)
        self._position = 0

    def batch(self, step: int) -> np.ndarray:
        size = int(self.sizes[step])
        if self._position + size > self.samples:
            self._order, self._position = self._rng.permutation(self.samples), 0
        chosen = self._order[self._position : self._position + size]
        self._position += size
        return chosen

    def plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every update's batch at once, drawn as :meth:`batch` would draw them in order (call
        it on a new sampler): the shuffled passes ``(passes, samples)``, and for each update
        its pass and where its batch starts in it, ``(epochs,)`` each; the batch of update
        ``i`` is ``passes[pass_of[i], start[i] : start[i] + sizes[i]]``."""
        # Where a pass ends follows from the sizes alone, so every further shuffle is drawn at
        # once: ``permuted`` shuffles each row as ``permutation`` would, from the same stream
        # (tests/test_kernels.py holds the plan to batch() drawn one update at a time).
        extra, pass_of, start = 0, [], []
        position = self._position
        for size in self.sizes.tolist():
            if position + size > self.samples:
                extra, position = extra + 1, 0
            pass_of.append(extra)
            start.append(position)
            position += size
        fresh = self._rng.permuted(np.tile(np.arange(self.samples), (extra, 1)), axis=1)
        passes = np.concatenate([self._order[None], fresh])
        return passes, np.array(pass_of, np.int64), np.array(start, np.int64)
