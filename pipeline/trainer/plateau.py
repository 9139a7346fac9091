"""ReduceLROnPlateau for many runs at once: torch's rule, stepped as arrays.

Each run's torch scheduler is built as usual (so torch checks its arguments and sets their
defaults) and then read: its factor, patience, threshold, cooldown, minimum rates and the rates
it starts from. :meth:`PlateauBank.step` applies ``ReduceLROnPlateau.step`` to every run in a
few array operations, in float64 as torch's Python floats, rather than one Python call per run
and update (``tests/test_plateau.py`` checks it against torch's own, rate for rate).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.optim.lr_scheduler import ReduceLROnPlateau


class PlateauBank:
    """The rates of ``schedulers`` (one per run), ``(runs, groups)`` after every :meth:`step`.

    Runs with fewer param groups than the most repeat their last group's values, unread.
    """

    def __init__(self, schedulers: Sequence[ReduceLROnPlateau]) -> None:
        groups = max(len(s.optimizer.param_groups) for s in schedulers)

        def per_group(values: Sequence[float]) -> list[float]:
            return [*values, *[values[-1]] * (groups - len(values))]

        self.rates = np.array(
            [per_group([g["lr"] for g in s.optimizer.param_groups]) for s in schedulers]
        )
        self.min_rates = np.array([per_group(s.min_lrs) for s in schedulers])
        self.factor = np.array([s.factor for s in schedulers])[:, None]
        self.eps = np.array([s.eps for s in schedulers])[:, None]
        self.patience = np.array([s.patience for s in schedulers])
        self.cooldown = np.array([s.cooldown for s in schedulers])
        self.maximise = np.array([s.mode == "max" for s in schedulers])
        relative = np.array([s.threshold_mode == "rel" for s in schedulers])
        threshold = np.array([s.threshold for s in schedulers])
        # a < best * (1 - t), a < best - t, a > best * (1 + t), a > best + t, as torch writes it
        self.scale = np.where(
            relative, np.where(self.maximise, threshold + 1.0, 1.0 - threshold), 1.0
        )
        self.shift = np.where(relative, 0.0, np.where(self.maximise, threshold, -threshold))
        self.best = np.where(self.maximise, -np.inf, np.inf)
        self.bad = np.zeros(len(schedulers), dtype=np.int64)
        self.cooling = np.zeros(len(schedulers), dtype=np.int64)

    def step(self, metrics: np.ndarray) -> None:
        """``ReduceLROnPlateau.step(metrics[i])`` for every run ``i``."""
        current = np.asarray(metrics, dtype=np.float64)
        bar = self.best * self.scale + self.shift
        better = np.where(self.maximise, current > bar, current < bar)
        self.best = np.where(better, current, self.best)
        self.bad = np.where(better, 0, self.bad + 1)
        cooling = self.cooling > 0
        self.cooling = np.where(cooling, self.cooling - 1, self.cooling)
        self.bad = np.where(cooling, 0, self.bad)
        reduce = self.bad > self.patience
        if reduce.any():
            lowered = np.maximum(self.rates * self.factor, self.min_rates)
            changed = reduce[:, None] & (self.rates - lowered > self.eps)
            self.rates = np.where(changed, lowered, self.rates)
            self.cooling = np.where(reduce, self.cooldown, self.cooling)
            self.bad = np.where(reduce, 0, self.bad)
