"""What every params section's validator shares: the error type, the frozen model base and the
run-name rule. The sections themselves live with the code that reads them."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ParamsError(ValueError):
    """params.yaml is wrong; the message names every bad key, its value and what is allowed."""


class Frozen(BaseModel):
    """A params section: unknown keys are errors, values never change, no inf or NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def raise_problems(problems: list[str], source: str) -> None:
    """One :class:`ParamsError` listing every problem, or nothing when there is none."""
    if problems:
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
