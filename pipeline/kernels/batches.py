"""Each run's objective weights for one update: which samples its mini-batch holds."""

from __future__ import annotations

import numba
import numpy as np

ZERO, ONE = np.float32(0.0), np.float32(1.0)


@numba.njit(cache=True, error_model="numpy")
def weights_at(step, weights, rows, passes, first_pass, pass_of, start, size):
    """For every mini-batch run ``rows[m]``: weight ``1 / size`` on the samples of its batch
    at ``step``, 0 elsewhere, in ``weights`` ``(samples, R)``. Its shuffled passes are
    ``passes[first_pass[m]:]``; ``pass_of``, ``start`` and ``size`` ``(runs, epochs)`` place
    each update's batch in them (:meth:`pipeline.trainer.minibatch.Sampler.plan`)."""
    for m in range(rows.shape[0]):
        row, count = rows[m], size[m, step]
        for n in range(weights.shape[0]):
            weights[n, row] = ZERO
        order = passes[first_pass[m] + pass_of[m, step]]
        share = ONE / np.float32(count)
        for j in range(start[m, step], start[m, step] + count):
            weights[order[j], row] = share
