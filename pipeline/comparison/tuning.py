"""The fair comparison: every schedule tuned on the same budget, then re-run and scored.

The protocol (after AlgoPerf's external tuning; docs/tuning.md says it in words):

1. **Trials.** Each schedule's space (``search.spaces``) draws ``search.trials`` points in each
   of ``search.studies`` studies; every point trains on every tuned workload, from the same
   weights, on the workload's train set. The reference schedule (``tuning.target.reference``)
   draws ``tuning.target.trials`` per study instead: the first ``search.trials`` of them are its
   compared trials (a scrambled Sobol' sequence's prefix is the shorter sequence itself), the
   rest only serve the target.
2. **Targets.** A workload's target is the median over studies of the reference's best
   validation loss over all its trials (or the workload's own ``target_loss``).
3. **Times.** A trial's time is the number of updates until its validation loss, evaluated
   every ``tuning.eval_every`` updates and after the last, first is at or below the target.
4. **Selection.** Per study the fastest trial (ties: the lower best validation loss, then the
   earlier trial); the chosen setting is the best trial of the median study. For held-out
   workloads, each schedule's setting is chosen once over every tuned workload (the trial that
   reaches the most targets, then the fastest relative to the budgets).
5. **Re-runs.** Each chosen setting trains again from ``tuning.reruns`` other seeds (new train
   sets, new initial weights) and is measured on the test set, read here and nowhere earlier.

Everything trains in :func:`pipeline.trainer.batched.train_batch`, one batch per workload and phase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.comparison import scoring, search
from pipeline.comparison.plan import ComparisonParams
from pipeline.core import stats
from pipeline.engines import units
from pipeline.engines.units import Progress
from pipeline.problems.architecture import Architecture
from pipeline.problems.data import Dataset
from pipeline.problems.model import logits
from pipeline.problems.workloads import Splits, Workload
from pipeline.schedules.specs import parse_spec
from pipeline.trainer.batch import BatchResult, Replicate, Setup
from pipeline.trainer.batched import train_batch
from pipeline.trainer.runtime import tensors

if TYPE_CHECKING:  # the plot stage reads tuning's results without running any engine
    from pipeline.engines.execution import Engine, Placement

SCORED, TARGET_ONLY = "scored", "target"


@dataclass(frozen=True)
class Trial:
    """One drawn setting of one schedule, on one workload."""

    schedule: str
    workload: str
    study: int
    index: int  # within its study
    budget: str  # SCORED: one of the equal budget; TARGET_ONLY: the reference's extra trials
    point: Mapping[str, Any]  # the drawn parameters, as the space names them
    lr: float
    scheduler: Mapping[str, Any]  # the entry the point resolves to on this workload's budget


@dataclass(frozen=True)
class ValidationCurves:
    """Losses evaluated after the updates ``steps`` (1-based), one row per trial or seed."""

    steps: np.ndarray  # (evaluations,)
    losses: np.ndarray  # (rows, evaluations)

    def times(self, target: float) -> np.ndarray:
        """Updates until the loss is first at or below ``target``; inf where never."""
        first = stats.time_to_target(self.losses, target)
        finite = np.isfinite(first)
        indices = np.where(finite, first, 1).astype(np.int64) - 1
        return np.where(finite, self.steps[indices].astype(np.float64), np.inf)


@dataclass(frozen=True)
class ChosenSetting:
    """The setting chosen for one schedule (per workload, or once for the held-out ones)."""

    schedule: str
    study: int
    index: int
    point: Mapping[str, Any]
    lr: float
    median_time: float  # median over studies of the study-best validation time (tuned only)
    at_edge: bool  # the chosen peak rate lies at an end of search.lr's range


@dataclass(frozen=True)
class Rerun:
    """One chosen setting re-run from one seed, measured on the test set."""

    schedule: str
    workload: str
    seed: int
    time: float  # updates until the test loss reached the target; inf if never
    final_loss: float
    accuracy: float


@dataclass
class TuningResult:
    workloads: tuple[Workload, ...]
    trials: list[Trial]
    times: np.ndarray  # (trials,) validation time to target, aligned with ``trials``
    best_losses: np.ndarray  # (trials,) the lowest validation loss evaluated
    final_losses: np.ndarray  # (trials,) the validation loss after the last update
    targets: dict[str, dict[str, Any]]  # workload -> {"target", "how", ...}
    chosen: dict[str, dict[str, ChosenSetting]]  # workload -> schedule -> choice
    held_out_choice: dict[str, ChosenSetting]  # schedule -> the setting used on held-out workloads
    reruns: list[Rerun]
    rerun_seeds: tuple[int, ...]
    trial_counts: dict[str, int] = field(default_factory=dict)  # schedule -> scored trials
    # workload -> schedule -> the rate of each update (first layer) in the first re-run: the
    # rates the chosen setting really used (ReduceLROnPlateau's depend on the losses).
    chosen_rates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall time
    # workload -> where its trials and its re-runs trained (the engine's placements)
    placements: dict[str, list[Placement]] = field(default_factory=dict)

    def rows(self, schedule: str, workload: str, budget: str = SCORED) -> np.ndarray:
        """Indices of the trials of one schedule on one workload, study-major."""
        return np.array(
            [
                i
                for i, t in enumerate(self.trials)
                if t.schedule == schedule and t.workload == workload and t.budget == budget
            ],
            dtype=np.int64,
        )


def rerun_seeds(params: ComparisonParams) -> tuple[int, ...]:
    """The seeds of the re-runs: after the tuning's own seed (``seed``), never equal to it."""
    return tuple(params.seed + 1 + offset for offset in range(params.tuning.reruns))


def draw_trials(
    params: ComparisonParams, workload: Workload, reference_only: bool = False
) -> list[Trial]:
    """Every trial on a workload, schedule by schedule, study by study (the held-out workloads
    only train the reference, for their targets)."""
    plan = params.search
    reference = params.tuning.target.reference
    trials = []
    for name, space in plan.spaces.items():
        if reference_only and name != reference:
            continue
        count = params.tuning.target.trials if name == reference else plan.trials
        unit = search.draw(space, count, plan.studies, plan.seed)
        for study in range(plan.studies):
            for index, point in enumerate(search.points(space, unit[study])):
                resolved = space.resolve(point, workload.epochs, workload.architecture.layer_names)
                trials.append(
                    Trial(
                        schedule=name,
                        workload=workload.name,
                        study=study,
                        index=index,
                        budget=TARGET_ONLY if reference_only or index >= plan.trials else SCORED,
                        point=point,
                        lr=resolved["lr"],
                        scheduler=resolved["scheduler"],
                    )
                )
    return trials


def train_settings(
    params: ComparisonParams,
    workload: Workload,
    settings: Sequence[tuple[str, Mapping[str, Any], float, int]],
    train_sets: Mapping[int, Dataset],
    measured_on: Dataset,
    device: torch.device,
    on_step: Callable[[int], None] = lambda step: None,
    engine: str = "auto",
) -> tuple[ValidationCurves, BatchResult]:
    """Train ``(name, scheduler entry, lr, seed)`` settings as one batch on a workload, by
    ``engine`` (:func:`pipeline.trainer.batched.train_batch`'s).

    ``train_sets[seed]`` is a setting's train set; ``measured_on`` the set whose loss is
    evaluated every ``tuning.eval_every`` updates and after the last.
    """
    epochs = workload.epochs
    train = params.train
    setup = Setup(epochs, workload.architecture, train.optimizer, train.momentum)
    replicates = [
        Replicate(parse_spec(name, dict(entry), epochs), seed, lr, workload.noise)
        for name, entry, lr, seed in settings
    ]
    datasets = {(seed, workload.noise): train_sets[seed] for seed in {s[3] for s in settings}}
    batch = train_batch(
        replicates,
        setup,
        datasets,
        device,
        on_step=on_step,
        validation={workload.noise: measured_on},
        evaluate_every=params.tuning.eval_every,
        closed_forms=True,
        engine=engine,
    )
    assert batch.validation_losses is not None and batch.evaluated is not None
    return ValidationCurves(batch.evaluated + 1, batch.validation_losses), batch


def reference_best(
    workload: Workload, reference: str, trials: Sequence[Trial], best_losses: np.ndarray
) -> int:
    """The index (into ``trials``) of the reference schedule's trial with the lowest validation
    loss on the workload, over all its trials (the larger budget)."""
    rows = [
        i
        for i, trial in enumerate(trials)
        if trial.schedule == reference and trial.workload == workload.name
    ]
    losses = np.where(np.isnan(best_losses[rows]), np.inf, best_losses[rows])
    if not np.isfinite(losses).any():
        raise ValueError(f"workload {workload.name!r}: every {reference} trial diverged")
    return rows[int(np.argmin(losses))]


def derive_target(workload: Workload, reference: Trial, rerun_bests: np.ndarray) -> dict[str, Any]:
    """The workload's target: its own ``target_loss``, else the median over the re-run seeds of
    the best validation loss of the reference's best setting (AlgoPerf sets its targets so:
    about half the reference's runs reach it)."""
    how = {
        "reference": reference.schedule,
        "reference_trial": {"study": reference.study, "trial": reference.index},
        "reference_lr": reference.lr,
        "rerun_bests": [float(v) for v in rerun_bests],
    }
    if workload.target_loss is not None:
        return {"target": workload.target_loss, "how": "given (workloads[].target_loss)", **how}
    finite = rerun_bests[np.isfinite(rerun_bests)]
    if not len(finite):
        raise ValueError(f"workload {workload.name!r}: every re-run of the reference diverged")
    return {
        "target": float(np.median(np.where(np.isnan(rerun_bests), np.inf, rerun_bests))),
        "how": f"median over {len(rerun_bests)} seeds of the best validation loss of"
        f" {reference.schedule}'s best of its trials",
        **how,
    }


def _key(time: float, best_loss: float, index: int) -> tuple[float, float, int]:
    """Trials compare by time, then by the lowest validation loss, then by draw order: among
    trials that all miss the target, the closest one is chosen."""
    return (time, best_loss if math.isfinite(best_loss) else math.inf, index)


def choose(times: np.ndarray, best_losses: np.ndarray) -> tuple[int, int, float]:
    """(study, trial, median time) from (studies, trials) arrays: each study's best trial, and
    the study whose best is the median (the lower one of an even count)."""
    studies, count = times.shape
    bests = []
    for study in range(studies):
        keys = [_key(times[study, t], best_losses[study, t], t) for t in range(count)]
        bests.append((min(keys), study))
    bests.sort()
    (_, _, trial), study = bests[(studies - 1) // 2]
    return study, trial, float(scoring.median_over_studies(scoring.study_best(times)))


def choose_across(
    times: np.ndarray, best_losses: np.ndarray, budgets: np.ndarray, targets: np.ndarray
) -> tuple[int, int]:
    """(study, trial) for held-out workloads, from (workloads, studies, trials) arrays: per
    trial, fewest targets missed, then the lowest mean time as a share of each budget (over
    the targets reached), then the lowest mean best loss relative to the target."""
    _, studies, count = times.shape
    reached = np.isfinite(times)
    missed = (~reached).sum(axis=0)
    relative = np.where(reached, times / budgets[:, None, None], 0.0)
    mean_time = relative.sum(axis=0) / np.maximum(reached.sum(axis=0), 1)
    closeness = (best_losses / targets[:, None, None]).mean(axis=0)
    bests = []
    for study in range(studies):
        keys = [
            (int(missed[study, t]), float(mean_time[study, t]), float(closeness[study, t]), t)
            for t in range(count)
        ]
        bests.append((min(keys), study))
    bests.sort()
    key, study = bests[(studies - 1) // 2]
    return study, key[-1]


def edge_of(params: ComparisonParams, lr: float) -> bool:
    """Whether a chosen peak rate lies within ``tuning.edge`` of an end of ``search.lr``."""
    plan = params.search
    dim = next(iter(plan.spaces.values())).dims[search.LR]
    low, high = getattr(dim, "low", None), getattr(dim, "high", None)
    if low is None or high is None:
        return False
    return scoring.at_edge(lr, low, high, log=isinstance(dim, search.LogUniform),
                           fraction=params.tuning.edge)  # fmt: skip


def run_protocol(
    params: ComparisonParams,
    data: Mapping[str, Splits],
    device: torch.device,
    progress: Progress = lambda done: None,
    workers: int | None = None,
    engine: Engine | None = None,
) -> TuningResult:
    """Tune, select, re-run: the whole comparison on ``data`` (each workload's splits, as the
    generate stage wrote them). Selection reads the validation sets only; the test sets are
    read after every choice is made, by the re-runs.

    Workloads train in ``workers`` processes at once (by default one per CPU this process may
    use, as the work repays them; one on a GPU), each on one thread: a workload's numbers do
    not depend on how many run beside it, so the bytes are the same with one worker or many,
    or on a Ray cluster's nodes (``engine``; by default this machine's processes).
    """
    plan = params.search
    workloads = params.workloads
    tuned = [w for w in workloads if not w.held_out]
    seeds = rerun_seeds(params)
    started = time.perf_counter()
    if engine is None:
        from pipeline.engines.execution import LocalEngine

        engine = LocalEngine(device.type)
    costs = [_cost(params, w) for w in workloads]
    with engine.pool(_worker_count(workers, device, costs), progress) as pool:
        tuned_units = pool.map(
            tune_workload,
            [(params, w, data[w.name], str(device)) for w in workloads],
            costs=costs,
        )
        placements = {w.name: [p] for w, p in zip(workloads, pool.placements, strict=True)}
        result = _gathered(workloads, tuned_units, seeds)
        result.trial_counts = {name: len(result.rows(name, tuned[0].name)) for name in plan.spaces}
        _select(params, result, tuned)
        result.seconds["trials and targets"] = time.perf_counter() - started
        started = time.perf_counter()
        reran = pool.map(
            rerun_workload,
            [(params, w, data[w.name], chosen_for(result, w), str(device)) for w in workloads],
            costs=[w.epochs * len(plan.spaces) for w in workloads],
        )
        for workload, placement in zip(workloads, pool.placements, strict=True):
            placements[workload.name].append(placement)
    for workload, (reruns, rates, test_target) in zip(workloads, reran, strict=True):
        result.reruns += reruns
        result.chosen_rates[workload.name] = rates
        result.targets[workload.name].update(test_target)
    result.seconds["re-runs"] = time.perf_counter() - started
    result.placements = placements
    return result


def _gathered(
    workloads: Sequence[Workload],
    tuned_units: Sequence[tuple[list[Trial], ValidationCurves, dict[str, Any]]],
    seeds: tuple[int, ...],
) -> TuningResult:
    """Every workload's trials and target in one result, in workload order; nothing chosen."""
    trials: list[Trial] = []
    times, best, final = [], [], []
    targets: dict[str, dict[str, Any]] = {}
    for workload, (drawn, curves, target) in zip(workloads, tuned_units, strict=True):
        targets[workload.name] = target
        trials += drawn
        times.append(curves.times(target["target"]))
        best.append(_lowest(curves.losses))
        final.append(curves.losses[:, -1])
    return TuningResult(
        workloads=tuple(workloads),
        trials=trials,
        times=np.concatenate(times),
        best_losses=np.concatenate(best),
        final_losses=np.concatenate(final),
        targets=targets,
        chosen={},
        held_out_choice={},
        reruns=[],
        rerun_seeds=seeds,
    )


def _worker_count(workers: int | None, device: torch.device, costs: Sequence[float]) -> int:
    """``workers``, or by default one per CPU this process may use, but only as many as the
    tuning's run-updates repay (a toy tuning trains in the stage's own process); never more
    than the workloads."""
    if device.type != "cpu":
        return 1  # one GPU: its kernels already run in parallel
    if workers is None:
        workers = min(units.usable_cpus(), units.worth_workers(sum(costs)))
    return max(1, min(workers, len(costs)))


def _cost(params: ComparisonParams, workload: Workload) -> float:
    """A workload's run-updates (its trials x their updates): the largest start first, and
    the total says how many workers the tuning repays."""
    plan = params.search
    count = params.tuning.target.trials * plan.studies
    if not workload.held_out:
        count += plan.trials * plan.studies * (len(plan.spaces) - 1)
    return float(count * workload.epochs)


def tune_workload(
    params: ComparisonParams, workload: Workload, splits: Splits, device: str, progress: Progress
) -> tuple[list[Trial], ValidationCurves, dict[str, Any]]:
    """One workload's trials on its validation set, and its target: the reference's best
    trial re-run from every re-run seed."""
    cpu = torch.device(device)
    reference = params.tuning.target.reference
    seeds = rerun_seeds(params)
    drawn = draw_trials(params, workload, reference_only=workload.held_out)
    settings = [(_trial_name(t), t.scheduler, t.lr, params.seed) for t in drawn]
    curves, _ = train_settings(
        params, workload, settings, {params.seed: splits.train}, splits.validation, cpu,
        _counting(progress, len(drawn)),
    )  # fmt: skip
    best = drawn[reference_best(workload, reference, drawn, _lowest(curves.losses))]
    again = [(f"target.{workload.name}.{seed}", best.scheduler, best.lr, seed) for seed in seeds]
    target_curves, _ = train_settings(
        params, workload, again, dict.fromkeys(seeds, splits.train), splits.validation, cpu,
        _counting(progress, len(again)),
    )  # fmt: skip
    return drawn, curves, derive_target(workload, best, _lowest(target_curves.losses))


def _lowest(losses: np.ndarray) -> np.ndarray:
    """Each row's lowest loss; a diverged (NaN) evaluation counts as infinitely bad."""
    return np.where(np.isnan(losses), np.inf, losses).min(axis=1)


def _trial_name(trial: Trial) -> str:
    return f"{trial.schedule}.{trial.workload}.{trial.study}.{trial.index}"


def _counting(progress: Progress, rows: int) -> Callable[[int], None]:
    """The trainer's per-step callback (given the step's index) as progress: each step is one
    update of each of the batch's ``rows`` runs."""
    return lambda step: progress(rows)


def _by_study(values: np.ndarray, rows: np.ndarray, studies: int) -> np.ndarray:
    return values[rows].reshape(studies, -1)


def _select(params: ComparisonParams, result: TuningResult, tuned: Sequence[Workload]) -> None:
    plan = params.search
    studies = plan.studies
    for workload in tuned:
        result.chosen[workload.name] = {}
        for name in plan.spaces:
            rows = result.rows(name, workload.name)
            study, index, median_time = choose(
                _by_study(result.times, rows, studies), _by_study(result.best_losses, rows, studies)
            )
            trial = result.trials[rows[study * plan.trials + index]]
            result.chosen[workload.name][name] = ChosenSetting(
                name, study, index, trial.point, trial.lr, median_time, edge_of(params, trial.lr)
            )
    budgets = np.array([w.epochs for w in tuned], dtype=np.float64)
    targets = np.array([result.targets[w.name]["target"] for w in tuned])
    for name in plan.spaces:
        stacked = [result.rows(name, w.name) for w in tuned]
        study, index = choose_across(
            np.stack([_by_study(result.times, rows, studies) for rows in stacked]),
            np.stack([_by_study(result.best_losses, rows, studies) for rows in stacked]),
            budgets,
            targets,
        )
        trial = result.trials[stacked[0][study * plan.trials + index]]
        result.held_out_choice[name] = ChosenSetting(
            name, study, index, trial.point, trial.lr, math.nan, edge_of(params, trial.lr)
        )


def chosen_for(result: TuningResult, workload: Workload) -> dict[str, ChosenSetting]:
    """Each schedule's setting on a workload: its own choice, or the held-out one."""
    if workload.held_out:
        return result.held_out_choice
    return result.chosen[workload.name]


def rerun_workload(
    params: ComparisonParams,
    workload: Workload,
    splits: Splits,
    chosen: Mapping[str, ChosenSetting],
    device: str,
    progress: Progress,
) -> tuple[list[Rerun], dict[str, np.ndarray], dict[str, Any]]:
    """Every chosen setting from every re-run seed on one workload, measured on its test set;
    each setting's rates in the first seed's run; and the test target, set as the validation
    one is: the median over seeds of the reference's best test loss (AlgoPerf sets a test
    target beside each validation target), or the workload's own ``target_loss``."""
    plan = params.search
    seeds = rerun_seeds(params)
    # A seed draws the initial weights; the data are the workload's (as AlgoPerf's seeds).
    train_sets = dict.fromkeys(seeds, splits.train)
    settings, owners = [], []
    for name, choice in chosen.items():
        entry = plan.spaces[name].resolve(
            choice.point, workload.epochs, workload.architecture.layer_names
        )
        for seed in seeds:
            settings.append(
                (f"{name}.{workload.name}.{seed}", entry["scheduler"], entry["lr"], seed)
            )
            owners.append((name, seed))
    curves, batch = train_settings(
        params, workload, settings, train_sets, splits.test, torch.device(device),
        _counting(progress, len(settings)),
    )  # fmt: skip
    reference = params.tuning.target.reference
    lowest = _lowest(curves.losses)
    if workload.target_loss is not None:
        test_target, how = workload.target_loss, "given"
    else:
        bests = lowest[[row for row, (name, _) in enumerate(owners) if name == reference]]
        test_target = float(np.median(bests))
        how = (
            f"median over {len(bests)} seeds of the best test loss of {reference}'s chosen setting"
        )
    test = {"test_target": test_target, "test_how": how}
    times = curves.times(test_target)
    accuracies = accuracies_on(batch, workload.architecture, splits.test)
    reruns, rates = [], {}
    for row, (name, seed) in enumerate(owners):
        if seed == seeds[0]:
            rates[name] = batch.rates[row, :, 0].copy()
        reruns.append(
            Rerun(name, workload.name, seed, float(times[row]), float(curves.losses[row, -1]),
                  float(accuracies[row]))
        )  # fmt: skip
    return reruns, rates, test


def accuracies_on(batch: BatchResult, architecture: Architecture, test: Dataset) -> np.ndarray:
    """Each replicate's accuracy on ``test``, with the training's portable arithmetic."""
    x, y = tensors(test, torch.device("cpu"))
    names = architecture.parameter_names
    weights = [torch.stack([state[n] for state in batch.state_dicts]) for n in names]
    with torch.no_grad():
        found = logits(architecture, weights, x)
    correct = (found.argmax(dim=-1) == y).sum(dim=-1).numpy()
    return correct.astype(np.float64) / len(y)
