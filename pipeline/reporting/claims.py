"""The tutorial's three claims and what both reports mean by them.

The train stage's report (:mod:`pipeline.reporting.report`) tests them on the tutorial's runs,
the tune stage's (:mod:`pipeline.reporting.tuning_report`) on each workload after equal tuning;
both give their answers as a :class:`Claim`, call the same schedules decaying, and count a run
that never reached the target the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

LARGE_VERSUS_SMALL = "A large rate is fast but imprecise; a small one is precise but slow."
DECAY_GETS_BOTH = (
    "Decaying the rate gets both: the speed of a large rate and a small rate's precision."
)
GROWING_BATCH = "Growing the batch size has an effect similar to decaying the rate."
CLAIMS = (LARGE_VERSUS_SMALL, DECAY_GETS_BOTH, GROWING_BATCH)

#: Schedule types that keep the rate where it started: every other type decays it.
KEEPS_THE_RATE = frozenset({"constant", "batch_size"})


@dataclass(frozen=True)
class Claim:
    """One claim's answer: the verdict ("held", "did not hold", "inconclusive", "not tested",
    or a count such as "held for 3 of 8") and the lines of evidence behind it."""

    text: str
    verdict: str
    evidence: tuple[str, ...]


def is_decaying(schedule_type: str) -> bool:
    return schedule_type not in KEEPS_THE_RATE


def capped(times: npt.ArrayLike, last: int) -> np.ndarray:
    """Updates to the target, a run that never reached it (``inf``) counted as one update past
    ``last``, the most a run that reached it could have taken, so that tests can rank it."""
    values = np.asarray(times, dtype=np.float64)
    return np.where(np.isfinite(values), values, float(last + 1))
