"""What training produced, in a form its readers can import without the trainer.

``curves.py`` and ``report.py`` read results but train nothing: importing this module does not
import torch (a state dict's tensors are only carried here, never computed on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.stats import mean_interval

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunResult:
    """One named run (``params.Run``: a schedule at a grid point) over all its seeds.

    ``finals`` holds each seed's final metrics; ``summary`` their means over seeds (and the
    95% half-widths as ``*_ci95``, with several seeds).
    """

    name: str  # the run's name: the schedule's, with its grid point when there is a grid
    schedule: str
    lr: float
    noise: float
    groups: tuple[str, ...]
    seeds: tuple[int, ...]
    rates: np.ndarray  # (seeds, epochs, groups)
    losses: np.ndarray  # (seeds, epochs)
    state_dicts: tuple[dict[str, torch.Tensor], ...]
    finals: dict[str, np.ndarray]  # metric -> (seeds,)
    batch_sizes: np.ndarray | None = None  # (epochs,), for a ``batch_size`` schedule

    @property
    def summary(self) -> dict[str, float]:
        summary: dict[str, float] = {}
        for key, values in self.finals.items():
            mean, half_width = mean_interval(values)
            summary[key] = float(mean)
            if len(self.seeds) > 1:
                summary[f"{key}_ci95"] = float(half_width)
        return summary
