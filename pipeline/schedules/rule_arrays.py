"""Rules of the step (:mod:`pipeline.schedules.expressions`) evaluated on every step at once.

The grammar is expressions.py's; only the evaluation differs: numpy on an array of steps, with
the bits of Python's floats and of libm (math) wherever numpy's own functions differ on this
machine. Where Python would raise, or any intermediate is not finite, :class:`NotOnArrays` is
raised and the caller evaluates step by step. The rate tables (:mod:`rate_tables`) build
LambdaLR's rates from it, and the schedule specs (:mod:`specs`) check a rule over a whole
budget with it.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from pipeline.schedules import expressions

FloatArray: TypeAlias = npt.NDArray[np.float64]


class NotOnArrays(Exception):
    """This rule, on these steps, is left to the step-by-step evaluation."""


# -- libm: numpy's own transcendental functions may differ from libm's in the last bit ---------


@functools.cache
def libm(name: str) -> Callable[[FloatArray], FloatArray]:
    """numpy's ufunc where it gives libm's (math's) bits on a probe, else math's per element.

    torch's schedulers and the rules call math.cos etc.; one ulp matters where a schedule
    subtracts nearly equal numbers (1 + cos near pi, at the end of a cosine), so numpy's SIMD
    versions (tanh here; sin, cos, exp, log on AVX-512 machines) are not good enough there.
    """
    exact, fast = getattr(math, name), getattr(np, name)
    probe = _PROBE[_PROBE > 0] if name == "log" else _PROBE
    with np.errstate(all="ignore"):
        if np.array_equal(fast(probe), [exact(x) for x in probe.tolist()]):
            return fast

    def per_element(values: FloatArray) -> FloatArray:
        flat = np.asarray(values, dtype=np.float64).ravel().tolist()
        try:
            return np.array([exact(x) for x in flat]).reshape(np.shape(values))
        except (ValueError, OverflowError):  # math raises where numpy gives nan or inf
            raise NotOnArrays from None

    return per_element


# Arguments as schedules make them: multiples of pi / T_max, fractions, moderate numbers.
_PROBE = np.concatenate(
    [
        math.pi * np.arange(4001) / 2000,
        math.pi * np.arange(1001) / 999,
        np.linspace(-40.0, 40.0, 8001),
        np.linspace(0.0, 1.0, 2001),
    ]
)


@functools.cache
def _power() -> Callable[[Any, Any], Any]:
    """np.power where it gives Python's float ** bits on a probe, else ** per element."""
    grid = np.meshgrid(np.linspace(0.01, 3.0, 150), np.linspace(-60.0, 60.0, 150))
    bases, exponents = (axis.ravel() for axis in grid)
    expected = [b**e for b, e in zip(bases.tolist(), exponents.tolist(), strict=True)]
    if np.array_equal(np.power(bases, exponents), expected):
        return np.power

    def per_element(base: Any, exponent: Any) -> Any:
        left, right = np.broadcast_arrays(np.asarray(base, np.float64), exponent)
        pairs = zip(left.ravel().tolist(), right.ravel().tolist(), strict=True)
        try:
            values = [b**e for b, e in pairs]
        except (ZeroDivisionError, OverflowError):
            raise NotOnArrays from None
        if any(isinstance(v, complex) for v in values):
            raise NotOnArrays
        return np.array(values, dtype=np.float64).reshape(left.shape)

    return per_element


# -- rules of the step, on arrays -------------------------------------------------------------

Env: TypeAlias = dict[str, Any]
Node: TypeAlias = Callable[[Env], Any]
_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,  # numpy's float // and % follow Python's
    ast.Mod: np.remainder,
}
_DIVIDING = (ast.Div, ast.FloorDiv, ast.Mod)
# The grammar is expressions.py's (its names, constants and functions); only the evaluation
# differs: numpy on every step at once, where expressions.py computes one step in Python floats.
_UNARY_FUNCTIONS = tuple(name for name in expressions.FUNCTIONS if name not in ("min", "max"))


@functools.lru_cache(maxsize=512)
def vector_rule(source: str) -> Callable[[FloatArray, float], Any]:
    """A rule of :mod:`pipeline.schedules.expressions`, evaluated on an array of steps at once.

    Every operation is numpy's (IEEE arithmetic, so the same bits as Python's floats) or
    libm's; where Python would raise (a division by zero, a log of 0, an overflow), or any
    intermediate is not finite, it raises :class:`NotOnArrays`.
    """
    try:
        node = _vectorise(ast.parse(source.strip(), mode="eval").body)
    except SyntaxError:
        raise NotOnArrays from None

    def evaluate(step: FloatArray, epochs: float) -> Any:
        with np.errstate(all="ignore"):  # a nan or inf is caught where it is made
            return node({"step": step, "epochs": epochs})

    return evaluate


def _vectorise(node: ast.AST) -> Node:
    if isinstance(node, ast.Constant):
        # bool is an int, but not a number in a rule
        if not isinstance(node.value, int | float) or isinstance(node.value, bool):
            raise NotOnArrays
        try:
            value = float(node.value)
        except OverflowError:
            raise NotOnArrays from None
        return lambda env: value
    if isinstance(node, ast.Name):
        return _name(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _vectorise(node.operand)
        sign = operator.neg if isinstance(node.op, ast.USub) else operator.pos
        return lambda env: sign(operand(env))
    if isinstance(node, ast.BinOp):
        return _binary(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return _call(node.func.id, [_vectorise(argument) for argument in node.args])
    raise NotOnArrays


def _name(name: str) -> Node:
    if name in expressions.VARIABLES:
        return lambda env: env[name]
    if name in expressions.CONSTANTS:
        constant = expressions.CONSTANTS[name]
        return lambda env: constant
    raise NotOnArrays


def _binary(node: ast.BinOp) -> Node:
    left, right = _vectorise(node.left), _vectorise(node.right)
    if isinstance(node.op, ast.Pow):
        return lambda env: _finite(_power()(left(env), right(env)))
    apply = _ARITHMETIC.get(type(node.op))
    if apply is None:
        raise NotOnArrays
    dividing = isinstance(node.op, _DIVIDING)

    def run(env: Env) -> Any:
        a, b = left(env), right(env)
        if dividing and np.any(np.asarray(b) == 0):
            raise NotOnArrays  # Python raises ZeroDivisionError
        return _finite(apply(a, b))

    return run


def _call(name: str, arguments: list[Node]) -> Node:
    if name in ("min", "max") and len(arguments) >= 2:
        # Python's min keeps the earlier of equal items: where(later < kept, later, kept)
        better = np.less if name == "min" else np.greater

        def extreme(env: Env) -> Any:
            kept = arguments[0](env)
            for argument in arguments[1:]:
                value = argument(env)
                kept = np.where(better(value, kept), value, kept)
            return kept

        return extreme
    if name == "log" and len(arguments) == 2:  # math.log(x, base) = log(x) / log(base)
        value, base = arguments

        def logarithm(env: Env) -> Any:
            denominator = _finite(libm("log")(np.asarray(base(env), dtype=np.float64)))
            if np.any(denominator == 0):
                raise NotOnArrays
            return _finite(libm("log")(np.asarray(value(env), np.float64)) / denominator)

        return logarithm
    if name not in _UNARY_FUNCTIONS or len(arguments) != 1:
        raise NotOnArrays
    (argument,) = arguments
    if name in ("exp", "log", "cos", "sin", "tanh"):
        function = libm(name)
    else:  # correctly rounded or exact in numpy and in Python alike
        function = {"sqrt": np.sqrt, "floor": np.floor, "ceil": np.ceil, "abs": np.abs}[name]
    return lambda env: _finite(function(np.asarray(argument(env), dtype=np.float64)))


def _finite(value: Any) -> Any:
    if not np.all(np.isfinite(value)):
        raise NotOnArrays
    return value
