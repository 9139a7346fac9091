"""exp, log and tanh in float32 from plain IEEE arithmetic: the same bits on every CPU.

The C library's ``expf`` is picked by glibc at load time from the CPU (an FMA variant on one
machine, SSE2 on another), and the two differ on a few inputs; a library call also stops the
loop over runs from vectorising. These are Cephes' single-precision algorithms (range
reduction, then a minimax polynomial), evaluated in float32 with every constant a float32, so
that numba keeps each operation in single precision. Within 1 ulp of the correctly rounded
value over their ranges (``tests/test_kernels.py`` checks it against float64).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pipeline.kernels.bits import bits_from_float, float_from_bits

F = np.float32
ONE, HALF, TWO = F(1.0), F(0.5), F(2.0)

# exp: x = k ln 2 + r, |r| <= ln(2) / 2; ln 2 in two parts so that k * LN2_HIGH is exact.
LOG2E = F(1.44269504088896341)
LN2_HIGH, LN2_LOW = F(0.693359375), F(-2.12194440e-4)
ROUNDER = F(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds to an integer
EXP_MAX, EXP_MIN = F(88.0), F(-87.3365478515625)  # 2**k stays normal: k in [-126, 127]
E0, E1, E2 = F(1.9875691500e-4), F(1.3981999507e-3), F(8.3334519073e-3)
E3, E4, E5 = F(4.1665795894e-2), F(1.6666665459e-1), F(5.0000001201e-1)

# log: x = m * 2**e with sqrt(1/2) <= m < sqrt(2), then a polynomial in m - 1.
SQRT_HALF = F(0.707106781186547524)
L0, L1, L2 = F(7.0376836292e-2), F(-1.1514610310e-1), F(1.1676998740e-1)
L3, L4, L5 = F(-1.2420140846e-1), F(1.4249322787e-1), F(-1.6668057665e-1)
L6, L7, L8 = F(2.0000714765e-1), F(-2.4999993993e-1), F(3.3333331174e-1)
MANTISSA, HALF_EXPONENT = np.int32(0x007FFFFF), np.int32(0x3F000000)

# tanh: a polynomial below 0.625, else 1 - 2 / (exp(2|x|) + 1); 1 to float32 beyond 9.
TANH_SMALL, TANH_FLAT = F(0.625), F(9.0)
T0, T1, T2 = F(-5.70498872745e-3), F(2.06390887954e-2), F(-5.37397155531e-2)
T3, T4 = F(1.33314422036e-1), F(-3.33332819422e-1)


@numba.njit(inline="always")
def exp(x):
    """e**x for float32 ``x``: 0 below -87.34 (where float32 turns subnormal), inf above 88
    (float32 overflows at 88.72; a softmax and a tanh never come near either end)."""
    clipped = min(max(x, EXP_MIN), EXP_MAX)
    k = (clipped * LOG2E + ROUNDER) - ROUNDER
    r = clipped - k * LN2_HIGH
    r = r - k * LN2_LOW
    polynomial = ((((E0 * r + E1) * r + E2) * r + E3) * r + E4) * r + E5
    value = polynomial * (r * r) + r + ONE
    scale = float_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    result = value * scale
    return F(0.0) if x < EXP_MIN else (F(np.inf) if x > EXP_MAX else result)


@numba.njit(inline="always")
def log(x):
    """The natural logarithm of a positive, normal float32 ``x``."""
    bits = bits_from_float(x)
    exponent = (bits >> np.int32(23)) - np.int32(126)
    m = float_from_bits((bits & MANTISSA) | HALF_EXPONENT)  # in [0.5, 1)
    below = m < SQRT_HALF
    exponent = exponent - np.int32(1) if below else exponent
    m = (m + m - ONE) if below else (m - ONE)
    z = m * m
    polynomial = ((((((L0 * m + L1) * m + L2) * m + L3) * m + L4) * m + L5) * m + L6) * m + L7
    y = (polynomial * m + L8) * m * z
    e = F(exponent)
    y = y + e * LN2_LOW
    y = y - HALF * z
    return m + y + e * LN2_HIGH


@numba.njit(inline="always")
def tanh(x):
    """The hyperbolic tangent of float32 ``x``."""
    magnitude = min(abs(x), TANH_FLAT)
    large = ONE - TWO / (exp(magnitude + magnitude) + ONE)
    z = x * x
    small = ((((T0 * z + T1) * z + T2) * z + T3) * z + T4) * z * x + x
    # tanh is odd: the sign is x's, also for -0.0, which the polynomial turns into +0.0
    return math.copysign(small if magnitude < TANH_SMALL else large, x)
