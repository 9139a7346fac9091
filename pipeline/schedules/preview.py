"""The learning rate each update of a named schedule would use, from params alone.

``lrsched preview`` shows these without training: each schedule from each starting rate of the
grid over ``train.lr`` (the noise of the data changes no rate, as the loss is not watched here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.schedules.specs import ScheduleSpec, preview


class UnknownSchedules(KeyError):
    """Names that are not schedules of the params; ``known`` lists those that are."""

    def __init__(self, unknown: list[str], known: list[str]) -> None:
        super().__init__(", ".join(unknown))
        self.unknown, self.known = unknown, known


def curves(
    schedules: Sequence[ScheduleSpec],
    names: Sequence[str],
    steps: int,
    start_rates: Sequence[float],
    optimizer: str,
    momentum: float,
) -> dict[str, dict[str, np.ndarray]]:
    """Per schedule named (every one when none) and starting rate: ``step``, ``lr``, and
    ``lr/<group>`` for a schedule with a rate per layer. Largest rate first.

    ReduceLROnPlateau is shown as if the loss never improved: the fastest decay it can make.
    """
    by_name = {spec.name: spec for spec in schedules}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise UnknownSchedules(unknown, list(by_name))
    chosen = [by_name[name] for name in (names or by_name)]
    rates_grid = sorted(set(start_rates), reverse=True)
    named: dict[str, dict[str, np.ndarray]] = {}
    for lr in rates_grid:
        for spec in chosen:
            name = spec.name + (f"@lr={lr:g}" if len(rates_grid) > 1 else "")
            rates = preview(spec, steps, lr, optimizer, momentum)
            named[name] = {"step": np.arange(steps), "lr": rates[:, 0]}
            if rates.shape[1] > 1:
                named[name].update({f"lr/{g}": rates[:, i] for i, g in enumerate(spec.groups)})
    return named
