"""LambdaLR rules: parsed without eval, equal to the same arithmetic done by Python's math."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pipeline.schedules import rule_arrays
from pipeline.schedules.expressions import ExpressionError, parse
from pipeline.schedules.specs import SpecError, parse_spec

EPOCHS = 100


@pytest.mark.parametrize(
    "source, reference",
    [
        ("0.95 ** (step // 10)", lambda s: 0.95 ** (s // 10)),
        ("1 / (1 + 0.005 * step)", lambda s: 1 / (1 + 0.005 * s)),
        (
            "0.5 * (1 + cos(pi * step / epochs))",
            lambda s: 0.5 * (1 + math.cos(math.pi * s / EPOCHS)),
        ),
        ("min(1, (step + 1) / 10)", lambda s: min(1, (s + 1) / 10)),
        ("exp(-step / 50)", lambda s: math.exp(-s / 50)),
        ("max(0.1, 1 - step % 30 / 30)", lambda s: max(0.1, 1 - s % 30 / 30)),
        ("sqrt(floor(step / 7) + 1) - +1", lambda s: math.sqrt(math.floor(s / 7) + 1) - 1),
        ("e ** (-abs(step - 50) / tanh(3))", lambda s: math.e ** (-abs(s - 50) / math.tanh(3))),
    ],
)
def test_rule_equals_python_arithmetic(source, reference):
    rule = parse(source)
    for step in range(EPOCHS):
        assert rule(step, EPOCHS) == pytest.approx(reference(step), rel=1e-15, abs=0)


@pytest.mark.parametrize(
    "source, message",
    [
        ("__import__('os')", "calling '__import__'"),
        ("open('/etc/passwd')", "calling 'open'"),
        ("step.real", "attribute access"),
        ("[step for step in range(9)]", "ListComp"),
        ("'a' * 10", "the constant 'a'"),
        ("lambda: 1", "Lambda"),
        ("step if step else 1", "IfExp"),
        ("step < 3", "Compare"),
        ("exp(x=1)", "positional arguments only"),
        ("step +", "not an arithmetic expression"),
        ("1; import os", "not an arithmetic expression"),
        ("+".join(["1"] * 150), "too long"),
        ("9" * 400, "at most 300 characters"),
    ],
)
def test_anything_but_arithmetic_is_refused(source, message):
    with pytest.raises(ExpressionError, match=None) as caught:
        parse(source)
    assert message in str(caught.value)


def test_runtime_faults_name_the_step():
    with pytest.raises(ExpressionError, match="at step 0"):
        parse("10 ** 10 ** 10")(0)
    with pytest.raises(ExpressionError, match="fails at step 5"):
        parse("1 / (step - 5)")(5)
    with pytest.raises(ExpressionError, match="not a real number"):
        parse("(-1) ** 0.5")(0)
    with pytest.raises(ExpressionError, match="fails at step 0"):
        parse("log(step)")(0)


@pytest.mark.parametrize(
    "rule, message",
    [
        # numpy would take epochs ** epochs as an integer power and wrap; Python overflows
        ("epochs ** epochs", "fails at step 0"),
        ("1 / (50 - step)", "fails at step 50"),
        ("log(100 - step)", "fails at step 100"),
        ("cos(pi * step / epochs)", "at step 51; a rate factor must be >= 0"),
        ("0.95 ** (step // 10)", None),
    ],
)
@pytest.mark.parametrize("power", ["as probed here", "numpy's"])
def test_a_rule_is_checked_over_the_whole_budget_and_the_first_bad_step_named(
    rule, message, power, monkeypatch
):
    """The check runs on every step at once where numpy can (rule_arrays.py), and step by
    step where it cannot, to name the step: either way, as Python's arithmetic decides. Where
    numpy's power passes the probe (not on every machine) it is the one rules use."""
    if power == "numpy's":
        monkeypatch.setattr(rule_arrays, "_power", lambda: np.power)
    entry = {"type": "LambdaLR", "lr_lambda": rule}
    if message is None:
        assert parse_spec("LambdaLR", entry, 150).rules["all"].source == rule
        return
    with pytest.raises(SpecError, match=re.escape(message)) as raised:
        parse_spec(
            "LambdaLR",
            entry,
            {"epochs ** epochs": 400, "cos(pi * step / epochs)": 100}.get(rule, 150),
        )
    assert raised.value.path == ".lr_lambda"
