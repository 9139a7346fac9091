"""The tutorial's claims, checked against this run's numbers: ``report.md``.

Each claim becomes comparisons of per-seed numbers between runs of the same noise level,
paired by seed (same data, same initial weights) and tested with Wilcoxon's signed-rank test,
two-sided, at ``analysis.alpha``. "Speed" is the number of updates to reach
``analysis.target_loss`` (a seed that never reaches it counts as the whole run); "precision" is
the final training loss. A part of a claim *supports* it when the difference points the claimed
way and is significant, *contradicts* it when it points the other way and is significant, and
is *inconclusive* otherwise. With one seed nothing can be tested: the report gives the
direction only and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.config.params import Params
from pipeline.core.stats import time_to_target, wilcoxon_p
from pipeline.reporting.claims import (
    DECAY_GETS_BOTH,
    GROWING_BATCH,
    LARGE_VERSUS_SMALL,
    Claim,
    capped,
    is_decaying,
)
from pipeline.trainer.results import RunResult

SUPPORTS, CONTRADICTS, INCONCLUSIVE = "supports", "contradicts", "inconclusive"
FIGURES = (
    "losses.png",
    "learning_rates.png",
    "test_accuracy.png",
    "steps_to_target.png",
    "final_metrics.png",
)


@dataclass(frozen=True)
class Comparison:
    """``better`` is claimed lower than ``worse`` on ``measure`` (both are minimised)."""

    measure: str
    better: str
    worse: str
    better_mean: float
    worse_mean: float
    p_value: float | None  # None with one seed
    outcome: str

    def sentence(self) -> str:
        sign = "<" if self.better_mean < self.worse_mean else ">="
        test = "one seed, untested" if self.p_value is None else f"p = {self.p_value:.3g}"
        return (
            f"{self.measure}: {self.better} {self.better_mean:.4g} {sign} {self.worse} "
            f"{self.worse_mean:.4g} ({test}): {self.outcome}"
        )


def compare(measure: str, better: RunResult, worse: RunResult, values, alpha: float) -> Comparison:
    """Is ``values(better)`` lower than ``values(worse)``, seed by seed?"""
    ours, theirs = values(better), values(worse)
    differences = ours - theirs
    p_value = wilcoxon_p(differences) if len(differences) > 1 else None
    if p_value is None or p_value >= alpha:
        outcome = INCONCLUSIVE if p_value is not None else _direction(differences)
    else:
        outcome = SUPPORTS if differences.mean() < 0 else CONTRADICTS
    return Comparison(
        measure, better.name, worse.name, float(ours.mean()), float(theirs.mean()), p_value, outcome
    )


def _direction(differences: np.ndarray) -> str:
    return f"{SUPPORTS if differences.mean() < 0 else CONTRADICTS} (direction only)"


def _verdict(parts: list[Comparison]) -> str:
    outcomes = [part.outcome.split(" ")[0] for part in parts]
    if CONTRADICTS in outcomes:
        return "did not hold"
    if all(outcome == SUPPORTS for outcome in outcomes):
        direction_only = any("direction only" in part.outcome for part in parts)
        return "held (direction only: one seed)" if direction_only else "held"
    return "inconclusive"


Measure = Callable[[RunResult], np.ndarray]


def check_claims(results: list[RunResult], params: Params) -> list[Claim]:
    """The tutorial's three claims, each against the runs at the first noise level."""
    analysis, epochs = params.analysis, params.train.epochs

    def speed(result: RunResult) -> np.ndarray:
        # A training loss precedes its update: 0 to epochs - 1 updates when reached.
        steps = time_to_target(result.losses, analysis.target_loss, first=0)
        return capped(steps, last=epochs - 1)

    def precision(result: RunResult) -> np.ndarray:
        return result.finals["final_loss"]

    def runs(kind: str | None = None, decay: bool = False) -> list[RunResult]:
        noise = results[0].noise  # the first noise level: claims compare runs on the same data
        chosen = []
        for result in results:
            spec = params.schedule(result.schedule)
            if result.noise != noise:
                continue
            if (kind and spec.type == kind) or (decay and is_decaying(spec.type)):
                chosen.append(result)
        return chosen

    constants = sorted(runs("constant"), key=lambda r: r.lr)
    baseline = constants[-1] if constants else None
    decays = [r for r in runs(decay=True) if baseline is None or r.lr == baseline.lr]
    batches = [r for r in runs("batch_size") if baseline is None or r.lr == baseline.lr]
    return [
        _large_versus_small(constants, speed, precision, analysis.target_loss, analysis.alpha),
        _decay_gets_both(baseline, decays, speed, precision, analysis.alpha),
        _growing_batch(baseline, decays, batches, precision, analysis.alpha),
    ]


def _large_versus_small(
    constants: list[RunResult], speed: Measure, precision: Measure, target: float, alpha: float
) -> Claim:
    text = LARGE_VERSUS_SMALL
    if len(constants) < 2:
        return Claim(
            text,
            "not tested",
            (
                "needs the constant schedule at two or more rates: a grid over train.lr, "
                "e.g. `dvc exp run -S 'train.lr=[0.05,0.01,0.002]'`",
            ),
        )
    small, large = constants[0], constants[-1]
    parts = [
        compare(f"updates to loss <= {target:g}", large, small, speed, alpha),
        compare("final training loss", small, large, precision, alpha),
    ]
    return Claim(text, _verdict(parts), tuple(p.sentence() for p in parts))


def _decay_gets_both(
    baseline: RunResult | None,
    decays: list[RunResult],
    speed: Measure,
    precision: Measure,
    alpha: float,
) -> Claim:
    text = DECAY_GETS_BOTH
    if baseline is None or not decays:
        return Claim(text, "not tested", ("needs a constant and a decaying schedule",))
    evidence, holding, tested = [], [], True
    for decay in decays:
        faster = compare("updates to target", decay, baseline, speed, alpha)
        finer = compare("final training loss", decay, baseline, precision, alpha)
        tested = tested and faster.p_value is not None
        # "Both": more precise than the constant rate, and not slower.
        if finer.outcome.startswith(SUPPORTS) and not faster.outcome.startswith(CONTRADICTS):
            holding.append(decay.name)
        evidence.append(f"{decay.name}: {finer.sentence()}; {faster.sentence()}")
    untested = "" if tested else " (direction only: one seed)"
    if holding:
        verdict = (
            f"held for {len(holding)} of {len(decays)} decaying schedules "
            f"({', '.join(holding)}){untested}"
        )
    else:
        verdict = f"did not hold for any of {len(decays)} decaying schedules{untested}"
    summary = (
        f"against {baseline.name} at lr {baseline.lr:g}: a schedule gets both when it ends "
        "with a lower final loss and is not slower to the target"
    )
    return Claim(text, verdict, (summary, *evidence))


def _growing_batch(
    baseline: RunResult | None,
    decays: list[RunResult],
    batches: list[RunResult],
    precision: Measure,
    alpha: float,
) -> Claim:
    text = GROWING_BATCH
    if baseline is None or not batches or not decays:
        return Claim(
            text, "not tested", ("needs a batch_size, a constant and a decaying schedule",)
        )
    decay_effect = float(
        np.mean([precision(d).mean() - precision(baseline).mean() for d in decays])
    )
    effect = "lowered" if decay_effect < 0 else "raised"
    evidence = [
        f"decaying the rate {effect} the final training loss against {baseline.name} by "
        f"{abs(decay_effect):.4g} on average over {len(decays)} decaying schedules; "
        "growing the batch is similar if it moves the loss the same way"
    ]
    verdicts = []
    for batch in batches:
        if decay_effect < 0:
            part = compare("final training loss", batch, baseline, precision, alpha)
        else:
            part = compare("final training loss", baseline, batch, precision, alpha)
        verdicts.append(_verdict([part]))
        evidence.append(f"{batch.name}: {part.sentence()}")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"
    return Claim(text, verdict, tuple(evidence))


def markdown(
    claims: list[Claim], ranking: str, params: Params, figures: str, tuned: str | None = None
) -> str:
    """``report.md``: the verdicts, their evidence, the ranking, the claims re-tested after
    equal tuning (``tuned``: the tune stage's ``claims.md``, when given), and the figures."""
    seeds = params.train.seeds
    lines = [
        "# Do the tutorial's claims hold?",
        "",
        f"{len(params.runs)} runs x {seeds} seed(s) x {params.train.epochs} updates "
        f"({params.train.optimizer}). Paired by seed, Wilcoxon signed-rank, two-sided, "
        f"alpha = {params.analysis.alpha:g}. Speed: updates until the training loss is at or "
        f"below {params.analysis.target_loss:g} (never counts as {params.train.epochs}); "
        "precision: the final training loss.",
        "",
        "| claim | verdict |",
        "| --- | --- |",
        *(f"| {claim.text} | **{claim.verdict}** |" for claim in claims),
        "",
    ]
    for claim in claims:
        lines += [f"## {claim.text}", "", f"Verdict: **{claim.verdict}**.", ""]
        lines += [f"- {line}" for line in claim.evidence] + [""]
    lines += ["## Ranking", "", ranking.rstrip(), ""]
    if tuned is not None:
        lines += [tuned.rstrip(), ""]
    lines += ["## Figures", ""]
    lines += [f"![{name}]({figures}/{name})" for name in FIGURES]
    return "\n".join(lines) + "\n"
