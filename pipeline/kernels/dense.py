"""A dense layer of every run at once: forward, and backward to its weights and its input.

Shapes, the runs last: inputs ``(samples, inputs, R)`` or ``(samples, inputs, 1)`` (one data
set shared by every run), weights ``(outputs, inputs, R)``, biases ``(outputs, R)``, outputs
``(samples, outputs, R)``. Every sum runs over its index in increasing order.
"""

from __future__ import annotations

import numba
import numpy as np

from pipeline.kernels import elementary

IDENTITY, TANH, RELU = 0, 1, 2  # the activation after the layer (IDENTITY: the logits)
ACTIVATIONS = {"identity": IDENTITY, "tanh": TANH, "relu": RELU}
ZERO, ONE = np.float32(0.0), np.float32(1.0)


@numba.njit(inline="always")
def _add_products(total, factors, inputs, n, i, shared):
    """``total[r] += factors[r] * inputs[n, i, r]`` per run, or ``inputs[n, i, 0]`` shared."""
    if shared:
        value = inputs[n, i, 0]
        for r in range(total.shape[0]):
            total[r] += factors[r] * value
    else:
        x = inputs[n, i]
        for r in range(total.shape[0]):
            total[r] += factors[r] * x[r]


@numba.njit(cache=True, error_model="numpy")
def forward(inputs, weight, bias, outputs, activation):
    """``outputs = activation(inputs @ weight.T + bias)`` per run."""
    samples, fan_in, shared = inputs.shape[0], inputs.shape[1], inputs.shape[2] == 1
    fan_out, runs = weight.shape[0], weight.shape[2]
    for n in range(samples):
        for o in range(fan_out):
            out = outputs[n, o]
            for r in range(runs):
                out[r] = ZERO
            for i in range(fan_in):
                _add_products(out, weight[o, i], inputs, n, i, shared)
            b = bias[o]
            if activation == TANH:
                for r in range(runs):
                    out[r] = elementary.tanh(out[r] + b[r])
            elif activation == RELU:
                for r in range(runs):
                    out[r] = max(out[r] + b[r], ZERO)
            else:
                for r in range(runs):
                    out[r] += b[r]


@numba.njit(cache=True, error_model="numpy")
def backward(grad_outputs, inputs, weight, grad_weight, grad_bias):
    """The gradients of the layer's weights and biases from ``grad_outputs``, the gradient of
    the objective with respect to the layer's pre-activation outputs."""
    samples, fan_in, shared = inputs.shape[0], inputs.shape[1], inputs.shape[2] == 1
    fan_out, runs = weight.shape[0], weight.shape[2]
    for o in range(fan_out):
        gb = grad_bias[o]
        for r in range(runs):
            gb[r] = ZERO
        for n in range(samples):
            g = grad_outputs[n, o]
            for r in range(runs):
                gb[r] += g[r]
        for i in range(fan_in):
            gw = grad_weight[o, i]
            for r in range(runs):
                gw[r] = ZERO
            for n in range(samples):
                _add_products(gw, grad_outputs[n, o], inputs, n, i, shared)


@numba.njit(cache=True, error_model="numpy")
def backward_input(grad_outputs, weight, activated, activation, grad_inputs):
    """The gradient with respect to the previous layer's pre-activation outputs: back through
    the weights, then through that layer's ``activation``, whose outputs are ``activated``."""
    samples, fan_in = grad_inputs.shape[0], grad_inputs.shape[1]
    fan_out, runs = weight.shape[0], weight.shape[2]
    for n in range(samples):
        for i in range(fan_in):
            gi = grad_inputs[n, i]
            for r in range(runs):
                gi[r] = ZERO
            for o in range(fan_out):
                w, g = weight[o, i], grad_outputs[n, o]
                for r in range(runs):
                    gi[r] += w[r] * g[r]
            a = activated[n, i]
            if activation == TANH:  # tanh' = 1 - tanh**2, from the output
                for r in range(runs):
                    gi[r] = gi[r] * (ONE - a[r] * a[r])
            elif activation == RELU:
                for r in range(runs):
                    gi[r] = gi[r] if a[r] > ZERO else ZERO
