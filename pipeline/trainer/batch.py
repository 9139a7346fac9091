"""What a batch of runs is, whichever engine trains it: its replicates, its setup, its rates and
its result.

The batch trains replicates: one seed of one named run each (:class:`Replicate`). Their
learning rates are the very sequence torch's schedulers produce (:class:`Rates`): schedules
that do not watch the loss are precomputed with :func:`pipeline.schedules.specs.trace` (torch's
own classes) or their closed forms; ReduceLROnPlateau replicates step torch's rule as arrays
(:class:`pipeline.trainer.plateau.PlateauBank`), fed their loss every update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config.params import Params
from pipeline.core.optim import make_optimizer
from pipeline.problems.architecture import Architecture
from pipeline.problems.data import Dataset
from pipeline.schedules.specs import Schedule, ScheduleSpec, stand_in_groups, trace
from pipeline.trainer.plateau import PlateauBank

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which the tutorial uses


@dataclass(frozen=True)
class Replicate:
    """One seed of a named run, the unit the batch trains: a schedule, the seed of its weights
    and data, the rate it starts from and the noise of its data."""

    spec: ScheduleSpec
    seed: int
    lr: float  # the rate the schedule starts from (train.lr, or one value of its grid)
    noise: float  # the noise of its train set (data.noise, or one value of its grid)

    @property
    def data_key(self) -> tuple[int, float]:
        return self.seed, self.noise


@dataclass(frozen=True)
class Setup:
    """What a batch trains under: its budget in updates (``train.epochs`` in params: the
    tutorial's word), the network, the optimizer and its momentum (SGD's)."""

    updates: int
    architecture: Architecture
    optimizer: str
    momentum: float

    @classmethod
    def of(cls, params: Params) -> Setup:
        """The train stage's: ``train.epochs`` updates of ``model`` on the two moons."""
        train = params.train
        return cls(train.epochs, params.architecture, train.optimizer, train.momentum)

    @property
    def layers(self) -> int:
        return len(self.architecture.layers)


@dataclass(frozen=True)
class BatchResult:
    replicates: tuple[Replicate, ...]
    rates: np.ndarray  # (replicates, epochs, layers): the rate of each layer's update i
    losses: np.ndarray  # (replicates, epochs): the whole train set's loss before update i
    state_dicts: tuple[dict[str, torch.Tensor], ...]
    batch_sizes: np.ndarray  # (replicates, epochs): points each update trained on
    # (replicates, evaluations): the validation set's loss after each evaluated update (and its
    # scheduler step); None when train_batch was given no validation sets.
    validation_losses: np.ndarray | None = None
    evaluated: np.ndarray | None = None  # (evaluations,): the 0-based updates evaluated
    # Each replicate's final metrics (:func:`replicate_finals`), where the process that trained
    # it already computed them (a shard); None: run_results computes them.
    finals: tuple[dict[str, float], ...] | None = None


class Rates:
    """Each replicate's rate and momentum per layer at each step, from torch's schedulers (or,
    with ``closed_forms``, their vectorised equivalents where one exists: same rates to 1e-12)."""

    def __init__(
        self, replicates: Sequence[Replicate], setup: Setup, closed_forms: bool = False
    ) -> None:
        self.epochs, layers = setup.updates, setup.layers
        self.table = np.empty((len(replicates), setup.updates, layers))
        self.momenta = np.empty((len(replicates), setup.updates, layers))
        plateaus: list[tuple[int, Schedule]] = []
        for index, replicate in enumerate(replicates):
            if replicate.spec.monitor is not None:
                # A real optimizer and scheduler, never stepped on real weights: torch checks
                # and completes their arguments, and the bank steps their rule as arrays.
                groups = stand_in_groups(replicate.spec)
                optimizer = make_optimizer(groups, setup.optimizer, replicate.lr, setup.momentum)
                plateaus.append((index, Schedule(replicate.spec, optimizer, setup.updates)))
                continue
            # trace() keeps each schedule's trace: the seeds of one schedule share it.
            spec, lr = replicate.spec, replicate.lr
            arguments = (spec, setup.updates, lr, setup.optimizer, setup.momentum)
            found = None
            if closed_forms:  # imported here: the train stage never needs it
                from pipeline.schedules import rate_tables

                found = rate_tables.closed_form(*arguments)
            rates, momenta = found if found is not None else trace(*arguments)
            self.table[index] = np.repeat(rates, layers // rates.shape[1], axis=1)
            self.momenta[index] = np.repeat(momenta, layers // momenta.shape[1], axis=1)

        self.plateaus = np.array([index for index, _ in plateaus], dtype=np.int64)
        self.watches_accuracy = np.array(
            [s.spec.monitor == "accuracy" for _, s in plateaus], dtype=bool
        )
        self.bank = PlateauBank([s.torch_scheduler for _, s in plateaus]) if plateaus else None
        for index, schedule in plateaus:  # ReduceLROnPlateau changes no momentum
            constant = schedule.momenta()
            self.momenta[index] = constant if len(constant) == layers else constant * layers
        self.layers = layers

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Every replicate's rates and momenta ``(replicates, layers)`` for update ``step``."""
        if self.bank is not None:
            rates = self.bank.rates
            if rates.shape[1] != self.layers:
                rates = rates.repeat(self.layers, 1)
            self.table[self.plateaus, step] = rates
        return self.table[:, step], self.momenta[:, step]

    def advance(self, step: int, losses: np.ndarray, accuracies: np.ndarray) -> None:
        """After update ``step``: the schedules that watch it see its loss or accuracy."""
        if self.bank is not None:
            rows = self.plateaus
            self.bank.step(np.where(self.watches_accuracy, accuracies[rows], losses[rows]))


def evaluated_updates(evaluate_every: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """The updates after which validation is measured (every ``evaluate_every``-th and the
    last), and for each update its row in the validation table (-1: none)."""
    if type(evaluate_every) is not int or evaluate_every < 1:
        raise ValueError(f"evaluate_every must be a positive integer, got {evaluate_every!r}")
    evaluated = np.unique(np.r_[np.arange(evaluate_every - 1, epochs, evaluate_every), epochs - 1])
    row_of = np.full(epochs, -1, dtype=np.int64)
    row_of[evaluated] = np.arange(len(evaluated))
    return evaluated, row_of


def validation_rows(
    replicates: Sequence[Replicate], sets: Mapping[float, Dataset]
) -> dict[float, list[int]]:
    """The replicates of each validation set, by noise level (a workload's data distribution);
    a ValueError names the noise levels that ``sets`` lacks."""
    rows: dict[float, list[int]] = {}
    for index, replicate in enumerate(replicates):
        rows.setdefault(replicate.noise, []).append(index)
    missing = sorted(set(rows) - set(sets))
    if missing:
        raise ValueError(f"validation lacks the sets of noise {missing}")
    return rows
