"""The tuning's report (``outputs/tuning/report.md``) and the tutorial's claims re-tested after
equal tuning (``outputs/tuning/claims.md``, which the train stage's report includes).

Claims are tested per workload on the re-runs of the chosen settings (the test set), paired by
seed with Wilcoxon's signed-rank test at ``analysis.alpha``, except the first: whether a large
rate is fast but imprecise is a property of the rates, read from the reference schedule's
trials (Spearman's rank correlation of the peak rate with the validation time and with the
final validation loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.comparison.plan import ComparisonParams
from pipeline.comparison.scores import RerunScore, Scores
from pipeline.comparison.tuning import TuningResult, chosen_for
from pipeline.core import stats
from pipeline.reporting.claims import (
    CLAIMS,
    DECAY_GETS_BOTH,
    GROWING_BATCH,
    LARGE_VERSUS_SMALL,
    Claim,
    capped,
    is_decaying,
)

FIGURES = ("profiles.png", "budget_curves.png", "chosen_rates.png", "test_times.png")


def _time(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "never"


def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if math.isfinite(value) else "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    align = ["---"] * right + ["---:"] * (len(header) - right)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(params: ComparisonParams, result: TuningResult, scores: Scores) -> str:
    plan, tuning = params.search, params.tuning
    schedules, tuned, held = scores.schedules, scores.tuned, scores.held_out
    lines = [
        "# Schedules compared after equal tuning",
        "",
        f"{len(schedules)} schedules, each {plan.studies} studies x {plan.trials} trials"
        f" (scrambled Sobol', seed {plan.seed}) on each of {len(tuned)} tuned workloads"
        f" ({', '.join(tuned)})"
        + (f"; held out: {', '.join(held)}" if held else "")
        + f". Validation loss every {tuning.eval_every} updates. Time: updates until the"
        " validation loss first reaches the workload's target. Per study the fastest trial;"
        " per workload the median over studies. The chosen settings re-ran from"
        f" {len(result.rerun_seeds)} other seeds (initial weights), measured on the test set"
        " against the test target.",
        "",
        "## Scores",
        "",
        f"AlgoPerf's benchmark score: the performance profile's area over [1, {tuning.r_max:g}],"
        " normalised to [0, 1] (1: fastest on every tuned workload). Ratio: time / the fastest"
        " schedule's time on that workload.",
        "",
    ]
    lines += _scores_table(scores)
    lines += _targets_section(params, result)
    lines += _test_section(result, scores)
    lines += _chosen_section(params, result, scores)
    lines += [claims_markdown(params, result, scores), "## Figures", ""]
    lines += [f"![{name}](figures/{name})" for name in FIGURES]
    return "\n".join(lines) + "\n"


def _scores_table(scores: Scores) -> list[str]:
    schedules, tuned = scores.schedules, scores.tuned
    lines: list[str] = []
    order = sorted(schedules, key=lambda s: (-scores.benchmark_score[s], s))
    header = ["schedule", "score (validation)", "score (test re-runs)"]
    header += [f"ratio on {w}" for w in tuned]
    rows = []
    for s in order:
        row = [s, f"{scores.benchmark_score[s]:.3f}", f"{scores.test_benchmark_score[s]:.3f}"]
        row += [_ratio(scores.validation_ratios[s][w]) for w in tuned]
        rows.append(row)
    lines += _table(header, rows)
    return lines


def _targets_section(params: ComparisonParams, result: TuningResult) -> list[str]:
    tuning = params.tuning
    lines: list[str] = []
    lines += ["", "## Targets", ""]
    rows = [
        [
            w.name + (" (held out)" if w.held_out else ""),
            str(w.epochs),
            f"{result.targets[w.name]['target']:.4g}",
            f"{result.targets[w.name]['test_target']:.4g}",
        ]
        for w in result.workloads
    ]
    reference = params.tuning.target.reference
    lines += [
        f"Validation target: the median over {len(result.rerun_seeds)} seeds of the best"
        f" validation loss of {reference}'s best trial (of {tuning.target.trials} per study)."
        f" Test target: the median over the same seeds of the best test loss of {reference}'s"
        " chosen setting, set after every choice was made. So about half the reference's runs"
        " reach each, as AlgoPerf sets its targets; a workload's own `target_loss` replaces"
        " both.",
        "",
    ]
    lines += _table(["workload", "budget", "validation target", "test target"], rows)
    return lines


def _test_section(result: TuningResult, scores: Scores) -> list[str]:
    schedules = scores.schedules
    budgets = {w.name: w.epochs for w in result.workloads}
    lines: list[str] = []
    lines += [
        "",
        "## Test set: updates to target of the chosen settings",
        "",
        f"Median over {len(result.rerun_seeds)} seeds [95% bootstrap interval] (reached:"
        " seeds that reached the target); final test loss and accuracy: mean ± 95% Student-t"
        " half-width.",
        "",
    ]
    for w in result.workloads:
        title = w.name + (
            " (held out: settings chosen on the tuned workloads)" if w.held_out else ""
        )
        lines += [f"### {title}", ""]
        rows = []
        for s in sorted(schedules, key=lambda s: _order(scores.test[w.name][s])):
            cell = scores.test[w.name][s]
            rows.append(
                [
                    s,
                    f"{_time(cell.median_time)} [{_time(cell.time_low)}, {_time(cell.time_high)}]",
                    f"{cell.reached:.0%}",
                    f"{cell.test_loss:.4f} ± {_number(cell.test_loss_half, 2)}",
                    f"{cell.test_accuracy:.3f} ± {_number(cell.test_accuracy_half, 2)}",
                ]
            )
        lines += _table(
            ["schedule", f"updates to target (of {budgets[w.name]})", "reached", "test loss",
             "test accuracy"],
            rows,
        )  # fmt: skip
        lines.append("")
    return lines


def _chosen_section(params: ComparisonParams, result: TuningResult, scores: Scores) -> list[str]:
    tuning, schedules = params.tuning, scores.schedules
    lines: list[str] = []
    lines += ["## Chosen peak rates", ""]
    rows = []
    for s in schedules:
        row = [s]
        for w in result.workloads:
            choice = chosen_for(result, w)[s]
            row.append(f"{choice.lr:.3g}" + (" (edge)" if choice.at_edge else ""))
        rows.append(row)
    lines += _table(
        ["schedule", *[w.name + (" (held out)" if w.held_out else "") for w in result.workloads]],
        rows,
    )
    lines += [""]
    if scores.edges:
        lines += [
            f"At an edge of the rate's range (within {tuning.edge:.0%} of its log width): "
            + ", ".join(scores.edges)
            + ". The range may be cutting off the best rate: widen `search.lr`.",
            "",
        ]
    else:
        lines += ["No chosen rate lies at an edge of the range.", ""]
    return lines


def _ratio(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "never"


def _order(cell: RerunScore) -> tuple[float, float]:
    return (cell.median_time, cell.test_loss)


def claims_markdown(
    params: ComparisonParams, result: TuningResult, scores: Scores, level: int = 2
) -> str:
    """The tutorial's claims, re-tested on every workload after equal tuning."""
    verdicts = {w.name: check_claims(params, result, w.name) for w in result.workloads}
    head = "#" * level
    lines = [
        f"{head} The tutorial's claims after equal tuning",
        "",
        "Each schedule tuned with the same budget on each workload (`outputs/tuning/`); paired"
        f" by seed over {len(result.rerun_seeds)} re-runs on the test set, Wilcoxon signed-rank"
        f" (normal approximation), two-sided, alpha = {params.analysis.alpha:g}.",
        "",
    ]
    names = [w.name + (" (held out)" if w.held_out else "") for w in result.workloads]
    rows = [
        [text] + [verdicts[w.name][i].verdict for w in result.workloads]
        for i, text in enumerate(CLAIMS)
    ]
    lines += _table(["claim", *names], rows, right=len(names) + 1)
    lines.append("")
    for w in result.workloads:
        lines += [f"{head}# {w.name}", ""]
        for claim in verdicts[w.name]:
            lines.append(f"- {claim.text} **{claim.verdict}**")
            lines += [f"  - {line}" for line in claim.evidence]
        lines.append("")
    return "\n".join(lines)


def check_claims(params: ComparisonParams, result: TuningResult, workload: str) -> list[Claim]:
    """Each of the tutorial's claims (:data:`~pipeline.reporting.claims.CLAIMS`), on one
    workload."""
    return [
        _large_versus_small(params, result, workload),
        _decay_gets_both(params, result, workload),
        _growing_batch(params, result, workload),
    ]


def _large_versus_small(params: ComparisonParams, result: TuningResult, workload: str) -> Claim:
    from scipy.stats import spearmanr

    reference = params.tuning.target.reference
    rows = result.rows(reference, workload)
    if not len(rows):  # held out: the reference trained only its target trials there
        rows = result.rows(reference, workload, "target")
    spec_types = {result.trials[i].scheduler["type"] for i in rows}
    if spec_types != {"constant"}:
        return Claim(
            LARGE_VERSUS_SMALL,
            "not tested",
            (f"needs a constant reference schedule, got {sorted(spec_types)}",),
        )
    lrs = np.array([result.trials[i].lr for i in rows])
    times = result.times[rows]
    finals = result.final_losses[rows]
    budget = next(w.epochs for w in result.workloads if w.name == workload)
    fast = spearmanr(lrs, capped(times, last=budget))
    imprecise = spearmanr(lrs, np.where(np.isfinite(finals), finals, np.inf))
    alpha = params.analysis.alpha
    is_fast = fast.statistic < 0 and fast.pvalue < alpha
    is_imprecise = imprecise.statistic > 0 and imprecise.pvalue < alpha
    verdict = "held" if is_fast and is_imprecise else (
        "did not hold" if (fast.statistic > 0 and fast.pvalue < alpha)
        or (imprecise.statistic < 0 and imprecise.pvalue < alpha) else "inconclusive"
    )  # fmt: skip
    evidence = (
        f"over {len(rows)} constant-rate trials (validation): Spearman rho of the rate with the"
        f" updates to target {fast.statistic:.2f} (p = {fast.pvalue:.2g}; negative: larger is"
        f" faster), with the final loss {imprecise.statistic:.2f} (p = {imprecise.pvalue:.2g};"
        " positive: larger is less precise)"
    )
    return Claim(LARGE_VERSUS_SMALL, verdict, (evidence,))


def _paired(result: TuningResult, workload: str, schedule: str) -> dict[int, Any]:
    return {r.seed: r for r in result.reruns if r.workload == workload and r.schedule == schedule}


def _decaying(params: ComparisonParams) -> list[str]:
    reference = params.tuning.target.reference
    spaces = params.search.spaces
    return [name for name, space in spaces.items() if name != reference and is_decaying(space.type)]


def _decay_gets_both(params: ComparisonParams, result: TuningResult, workload: str) -> Claim:
    reference = params.tuning.target.reference
    decaying = _decaying(params)
    if not decaying or reference not in params.search.spaces:
        return Claim(
            DECAY_GETS_BOTH, "not tested", ("needs a constant schedule and decaying ones",)
        )
    budget = next(w.epochs for w in result.workloads if w.name == workload)
    base = _paired(result, workload, reference)
    seeds = sorted(base)
    alpha = params.analysis.alpha
    held, evidence = [], []
    for name in decaying:
        runs = _paired(result, workload, name)
        loss = np.array([runs[s].final_loss - base[s].final_loss for s in seeds])
        time = capped([runs[s].time for s in seeds], budget) - capped(
            [base[s].time for s in seeds], budget
        )
        # Normal approximation: the exact test's permutations cost seconds over 50 pairs.
        p_loss = stats.wilcoxon_p(loss, method="asymptotic")
        p_time = stats.wilcoxon_p(time, method="asymptotic")
        precise = loss.mean() < 0 and p_loss < alpha
        not_slower = not (time.mean() > 0 and p_time < alpha)
        if precise and not_slower:
            held.append(name)
        evidence.append(
            f"{name} - {reference}: test loss {loss.mean():+.3g} (p = {p_loss:.2g}), updates to"
            f" target {time.mean():+.0f} (p = {p_time:.2g})"
        )
    verdict = f"held for {len(held)} of {len(decaying)}" + (f" ({', '.join(held)})" if held else "")
    return Claim(DECAY_GETS_BOTH, verdict, tuple(evidence))


def _growing_batch(params: ComparisonParams, result: TuningResult, workload: str) -> Claim:
    """Similar: against the constant reference, growing the batch moves the test loss the way
    decaying the rate does on average, and significantly; the opposite way, significantly, is
    "did not hold"."""
    plan = params.search
    reference = params.tuning.target.reference
    growing = [name for name, space in plan.spaces.items() if space.type == "batch_size"]
    decaying = _decaying(params)
    if not growing or not decaying or reference not in plan.spaces:
        return Claim(
            GROWING_BATCH,
            "not tested",
            ("needs a `batch_size` schedule, decaying ones and the reference",),
        )
    base = _paired(result, workload, reference)
    seeds = sorted(base)

    def differences(name: str) -> np.ndarray:
        runs = _paired(result, workload, name)
        return np.array([runs[s].final_loss - base[s].final_loss for s in seeds])

    decay = float(np.mean([differences(name).mean() for name in decaying]))
    alpha = params.analysis.alpha
    evidence = [
        f"decaying the rate moved the test loss against {reference} by {decay:+.3g} on average"
        f" over {len(decaying)} schedules; growing the batch is similar if it moves it the same"
        " way"
    ]
    verdicts = []
    for name in growing:
        moved = differences(name)
        p = stats.wilcoxon_p(moved, method="asymptotic")
        same = np.sign(moved.mean()) == np.sign(decay)
        verdicts.append(
            "held" if same and p < alpha else "did not hold" if p < alpha else "inconclusive"
        )
        evidence.append(f"{name} - {reference}: test loss {moved.mean():+.3g} (p = {p:.2g})")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else ", ".join(verdicts)
    return Claim(GROWING_BATCH, verdict, tuple(evidence))
