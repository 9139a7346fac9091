"""The fair comparison's params: the ``workloads`` and ``search`` sections, checked together
with ``tuning``, on top of the params every stage reads.

Only the tune stage (and ``lrsched validate``) reads these sections, so only it imports the
workloads' and search spaces' code, and an edit to either re-runs only it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.comparison import search
from pipeline.comparison.search import SearchPlan
from pipeline.config.params import Params, ScheduleCheck, load_params, parse_params
from pipeline.core.validation import ParamsError, raise_problems
from pipeline.problems.workloads import Workload, workloads_section


@dataclass(frozen=True, kw_only=True)
class ComparisonParams(Params):
    """Params with the comparison's workloads and every schedule's search space resolved."""

    workloads: tuple[Workload, ...]
    search: SearchPlan

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its document, parsed again on the other side (see :class:`Params`)."""
        return (parse_comparison, (self.raw, "params", "parse"))


def load_comparison(path: str | Path, schedules: ScheduleCheck = "parse") -> ComparisonParams:
    """Read a params file with the comparison's sections, or raise :class:`ParamsError`."""
    return with_comparison(load_params(path, schedules), str(path), schedules != "skip")


def parse_comparison(
    document: Any, source: str = "params.yaml", schedules: ScheduleCheck = "trial"
) -> ComparisonParams:
    """Validate an already-parsed params mapping with the comparison's sections."""
    return with_comparison(parse_params(document, source, schedules), source, schedules != "skip")


def with_comparison(params: Params, source: str, resolve: bool = True) -> ComparisonParams:
    """``params`` with its ``workloads`` and ``search`` sections checked: every space resolves
    into a valid scheduler entry on every workload's budget (when ``resolve``), and the target's
    reference schedule is one of the spaces."""
    workloads = workloads_section(params.raw, source)
    plan = _search_plan(params.raw.get("search"), source)
    problems = _target_problems(params, plan)
    if resolve:
        problems += _resolution_problems(plan, workloads)
    raise_problems(problems, source)
    inherited = {field.name: getattr(params, field.name) for field in fields(Params)}
    return ComparisonParams(**inherited, workloads=workloads, search=plan)


def _search_plan(section: Any, source: str) -> SearchPlan:
    if section is None:
        return SearchPlan(16, 3, 0, search.DEFAULT_SPACES)
    if not isinstance(section, dict):
        raise ParamsError(f"{source} is invalid:\n  - search: got {section!r}; a mapping")
    try:
        return search.parse_search(section)
    except ValueError as error:
        raise ParamsError(f"{source} is invalid:\n  - {error}") from None


def _target_problems(params: Params, plan: SearchPlan) -> list[str]:
    problems, target = [], params.tuning.target
    if target.reference not in plan.spaces:
        problems.append(
            f"tuning.target.reference: got {target.reference!r}; must be one of the search"
            f" spaces: {', '.join(plan.spaces)}"
        )
    if target.trials < plan.trials:
        problems.append(
            f"tuning.target.trials: got {target.trials}; must be >= search.trials"
            f" ({plan.trials}): the target comes from a larger budget than the compared one"
        )
    return problems


def _resolution_problems(plan: SearchPlan, workloads: tuple[Workload, ...]) -> list[str]:
    """Each space at every dimension's low and high end, on every workload's budget."""
    from pipeline.schedules.specs import SpecError, parse_spec

    problems = []
    for space in plan.spaces.values():
        for workload in workloads:
            for corner in (0.0, 1.0):
                point = space.from_unit([corner] * len(space.dims))
                try:
                    entry = space.resolve(
                        point, workload.epochs, workload.architecture.layer_names
                    )["scheduler"]
                    parse_spec(space.name, entry, workload.epochs)
                except (SpecError, ValueError) as error:
                    path = getattr(error, "path", "")
                    problems.append(
                        f"search.spaces.{space.name}{path}: on workload {workload.name!r}"
                        f" ({workload.epochs} updates), at every dimension's"
                        f" {'low' if corner == 0 else 'high'} end: {error}"
                    )
                    break
    return problems
