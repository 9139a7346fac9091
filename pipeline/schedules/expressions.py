"""Arithmetic rules of the step, for LambdaLR, parsed from text without eval.

A rule such as ``0.95 ** (step // 10)`` is parsed with :mod:`ast` and compiled into a tree of
closures. Only numbers, the names in ``VARIABLES`` and ``CONSTANTS``, the arithmetic operators
and the functions in ``FUNCTIONS`` are accepted; anything else (attribute access, subscripts,
strings, lambdas, comprehensions, other calls) is refused with a message naming what was found.
Every number is a float, so ``9 ** 9 ** 9`` overflows at once instead of building a huge int.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SOURCE_LENGTH = 300
MAX_NODES = 200

VARIABLES = ("step", "epochs")
CONSTANTS = {"pi": math.pi, "e": math.e}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "cos": math.cos,
    "sin": math.sin,
    "tanh": math.tanh,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "abs": abs,
    "min": min,
    "max": max,
}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}

Env = dict[str, float]


class ExpressionError(ValueError):
    """A rule that cannot be parsed or evaluated; the message says why."""


def allowed_summary() -> str:
    return (
        f"numbers, {', '.join(VARIABLES)}, {', '.join(CONSTANTS)}, + - * / // % **, "
        f"and {', '.join(f'{name}()' for name in FUNCTIONS)}"
    )


@dataclass(frozen=True)
class Expression:
    """A compiled rule; call it with the step (and the total number of steps)."""

    source: str
    _evaluate: Callable[[Env], float] = field(repr=False, compare=False)

    def __call__(self, step: int, epochs: int = 0) -> float:
        try:
            value = self._evaluate({"step": float(step), "epochs": float(epochs)})
        except (OverflowError, ZeroDivisionError, ValueError) as error:
            raise ExpressionError(f"{self.source!r} fails at step {step}: {error}") from None
        if not math.isfinite(value):
            raise ExpressionError(f"{self.source!r} is {value} at step {step}")
        return value


def parse(source: str) -> Expression:
    """Parse ``source`` into an :class:`Expression`, or raise :class:`ExpressionError`."""
    if not isinstance(source, str):
        raise ExpressionError(f"a rule must be a string, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(f"a rule is at most {MAX_SOURCE_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"{source!r} is not an arithmetic expression: {error.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ExpressionError(f"{source!r} is too long (more than {MAX_NODES} parts)")
    return Expression(source, _compile(tree.body, source))


def _compile(node: ast.AST, source: str) -> Callable[[Env], float]:
    # int or float only: True and False are ints to isinstance, but not numbers in a rule.
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        try:
            value = float(node.value)
        except OverflowError:
            raise ExpressionError(f"{source!r}: the number {node.value} is too large") from None
        return lambda env: value
    if isinstance(node, ast.Name):
        if node.id in VARIABLES:
            name = node.id
            return lambda env: env[name]
        if node.id in CONSTANTS:
            constant = CONSTANTS[node.id]
            return lambda env: constant
        raise ExpressionError(f"{source!r}: unknown name {node.id!r}; allowed: {allowed_summary()}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        apply, left, right = (
            _BINARY[type(node.op)],
            _compile(node.left, source),
            _compile(node.right, source),
        )
        return lambda env: _checked(apply(left(env), right(env)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        unary, operand = _UNARY[type(node.op)], _compile(node.operand, source)
        return lambda env: unary(operand(env))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if node.keywords:
            raise ExpressionError(f"{source!r}: functions take positional arguments only")
        function, arguments = FUNCTIONS[node.func.id], [_compile(a, source) for a in node.args]
        return lambda env: _checked(function(*(argument(env) for argument in arguments)))
    raise ExpressionError(
        f"{source!r}: {_describe(node)} is not allowed; allowed: {allowed_summary()}"
    )


def _checked(value: float | complex) -> float:
    # A negative base to a fractional power gives a complex number in Python: refuse it.
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    return float(value)


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        return f"calling {name!r}"
    if isinstance(node, ast.Attribute):
        return f"attribute access {ast.unparse(node)!r}"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    return f"{type(node).__name__} ({ast.unparse(node)!r})"
