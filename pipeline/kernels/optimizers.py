"""One update of every run's weights, as torch.optim computes it, a rate per run and layer.

``param``, ``grad`` and the state are ``(parameters, R)`` float32, every weight of a run in
one column; ``layer_of[k]`` is the layer (param group) of row ``k``, and a rate or momentum is
``(layers, R)``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, error_model="numpy")
def adam(
    param, grad, first, second, layer_of, weight1, step_size, beta2, weight2, correction2, eps
):
    """torch.optim.Adam's step (``foreach=False``, no weight decay). Per layer and run:
    ``weight1 = 1 - beta1`` and ``step_size = lr / (1 - beta1**t)``; shared: ``weight2 =
    1 - beta2`` and ``correction2 = sqrt(1 - beta2**t)``, each computed in float64 and
    rounded, as torch's Python floats are when they meet a float32 tensor."""
    runs = param.shape[1]
    for k in range(param.shape[0]):
        p, g, m, v = param[k], grad[k], first[k], second[k]
        w1, size = weight1[layer_of[k]], step_size[layer_of[k]]
        for r in range(runs):
            gradient = g[r]
            m[r] = m[r] + w1[r] * (gradient - m[r])  # lerp, its weight below 0.5
            v[r] = v[r] * beta2 + weight2 * (gradient * gradient)
            denom = np.sqrt(v[r]) / correction2 + eps
            p[r] = p[r] - size[r] * (m[r] / denom)


@numba.njit(cache=True, error_model="numpy")
def sgd(param, grad, buffer, layer_of, momentum, lr, first_step):
    """torch.optim.SGD's step (no dampening, nesterov or weight decay), ``momentum`` and
    ``lr`` per layer and run; the momentum buffer starts as the first gradient."""
    runs = param.shape[1]
    for k in range(param.shape[0]):
        p, g, b = param[k], grad[k], buffer[k]
        mu, rate = momentum[layer_of[k]], lr[layer_of[k]]
        for r in range(runs):
            gradient = g[r]
            if mu[r] != 0:
                gradient = gradient if first_step else b[r] * mu[r] + gradient
                b[r] = gradient
            p[r] = p[r] - rate[r] * gradient
