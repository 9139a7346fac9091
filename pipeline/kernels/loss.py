"""Cross-entropy of every run's logits: the loss, the correct predictions and the gradient."""

from __future__ import annotations

import numba
import numpy as np

from pipeline.kernels import elementary

ZERO, ONE = np.float32(0.0), np.float32(1.0)


@numba.njit(cache=True, error_model="numpy")
def cross_entropy(logits, labels, weights, losses, correct, grad):
    """Per run: the mean loss over every sample, the count of samples whose largest logit
    (the first, at a tie) is their label, and, unless ``weights`` is empty, the gradient of
    ``sum_n weights[n] * loss_n`` with respect to the logits into ``grad``.

    ``logits`` ``(samples, classes, R)``; ``labels`` ``(samples, R)`` or ``(samples, 1)``
    int64; ``weights`` ``(samples, R)`` float32 (``1 / batch size`` where a sample is in the
    run's batch, else 0) or ``(0, 0)``; ``losses`` ``(R,)`` float32; ``correct`` ``(R,)``
    int64; ``grad`` like ``logits``.
    """
    samples, classes, runs = logits.shape
    shared = labels.shape[1] == 1
    with_grad = weights.shape[0] > 0
    total = np.zeros(runs, dtype=np.float32)
    largest = np.empty(runs, dtype=np.float32)
    norm = np.empty(runs, dtype=np.float32)
    best = np.empty(runs, dtype=np.int64)
    exps = np.empty((classes, runs), dtype=np.float32)
    for r in range(runs):
        correct[r] = 0
    for n in range(samples):
        z = logits[n]
        for r in range(runs):
            largest[r], best[r], norm[r] = z[0, r], 0, ZERO
        for c in range(1, classes):
            for r in range(runs):
                above = z[c, r] > largest[r]
                largest[r] = z[c, r] if above else largest[r]
                best[r] = c if above else best[r]
        for c in range(classes):
            for r in range(runs):
                exps[c, r] = elementary.exp(z[c, r] - largest[r])
                norm[r] += exps[c, r]
        if shared:
            label = labels[n, 0]
            for r in range(runs):
                total[r] += elementary.log(norm[r]) + largest[r] - z[label, r]
                correct[r] += best[r] == label
        else:
            for r in range(runs):
                label = labels[n, r]
                total[r] += elementary.log(norm[r]) + largest[r] - z[label, r]
                correct[r] += best[r] == label
        if with_grad:
            g, w = grad[n], weights[n]
            for c in range(classes):
                for r in range(runs):
                    label = labels[n, 0] if shared else labels[n, r]
                    g[c, r] = w[r] * (exps[c, r] / norm[r] - (ONE if c == label else ZERO))
    count = np.float32(samples)
    for r in range(runs):
        losses[r] = total[r] / count
