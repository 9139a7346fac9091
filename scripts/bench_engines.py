"""Time the two engines side by side on the tune stage's own trials: kernels against torch.

    python scripts/bench_engines.py [--params FILE] [--repeat N] [--held-out]

Every tuned workload's scored and target trials (``search`` and ``tuning`` of the params file,
``params.yaml`` by default) are drawn as the tune stage draws them and trained as one batch per
workload, once by each engine in turn in each round, in this one process on one thread: the same
trials on the same machine at the same moment. Prints a markdown table per workload, with the
run-updates per second (one update of one run) and the share of runs whose validation curves
agree within 1e-4 at every evaluation (the rest are runs at rates where training is chaotic,
and float32 rounding grows: the oracle for each engine is ``tests/test_batched.py``).
``--held-out`` also trains the held-out workloads' trials as if they were tuned: a measure of
each engine on every model of the family (the tune stage itself trains only their targets).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.comparison.plan import load_comparison
from pipeline.comparison.tuning import draw_trials, train_settings
from pipeline.problems import workloads
from pipeline.trainer.runtime import make_deterministic

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("torch", "kernels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of both engines")
    parser.add_argument(
        "--held-out", action="store_true", help="also the held-out workloads, as if tuned"
    )
    arguments = parser.parse_args()
    make_deterministic()
    params = load_comparison(arguments.params)
    cpu = torch.device("cpu")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, one thread; ")
    print(f"median of {arguments.repeat} rounds, seconds of training\n")
    print(
        "| workload | runs x updates | torch (s) | kernels (s) | speed-up"
        " | kernels: run-updates/s | runs within 1e-4 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = dict.fromkeys(ENGINES, 0.0)
    for workload in params.workloads:
        if workload.held_out and not arguments.held_out:
            continue
        splits = workloads.generate(workload, params.seed)
        drawn = draw_trials(params, workload)
        settings = [
            (f"{t.schedule}.{t.index}.{t.study}", t.scheduler, t.lr, params.seed) for t in drawn
        ]
        seconds = {engine: [] for engine in ENGINES}
        curves = {}
        for _ in range(arguments.repeat):
            for engine in ENGINES:
                start = time.perf_counter()
                curves[engine], _ = train_settings(
                    params, workload, settings, {params.seed: splits.train}, splits.validation,
                    cpu, engine=engine,
                )  # fmt: skip
                seconds[engine].append(time.perf_counter() - start)
        median = {engine: statistics.median(values) for engine, values in seconds.items()}
        for engine in ENGINES:
            totals[engine] += median[engine]
        updates = len(settings) * workload.epochs
        apart = np.abs(curves["torch"].losses - curves["kernels"].losses)
        agree = np.mean(np.nan_to_num(apart, nan=np.inf).max(axis=1) <= 1e-4)
        print(
            f"| {workload.name} ({workload.architecture.describe()}) |"
            f" {len(settings)} x {workload.epochs} | {median['torch']:.2f} |"
            f" {median['kernels']:.2f} | {median['torch'] / median['kernels']:.1f}x |"
            f" {updates / median['kernels'] / 1e6:.2f} M | {agree:.0%} |"
        )
    print(
        f"| all | | {totals['torch']:.1f} | {totals['kernels']:.1f} |"
        f" {totals['torch'] / totals['kernels']:.1f}x | | |"
    )


if __name__ == "__main__":
    main()
