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
