"""Time the pipeline against the tutorial-style reference, side by side, on this machine.

    python scripts/benchmark.py [--repeat N]
    python scripts/benchmark.py --against REV [--params FILE] [--repeat N]

Each measurement is a whole process (start-up included) in a fresh temporary copy of the project
with a fresh SQLite store, so nothing is cached between runs. Prints a markdown table.

``--against REV`` times every stage alone (``dvc repro -f -s STAGE``, after one ``dvc repro``
filled the project) with this checkout's code and with git revision ``REV``'s, the two taking
turns in each round, so that both see the same machine. ``--params FILE`` runs them on another
params file (the tests' tiny params, say) instead of ``params.yaml``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "tune", "train", "plot")
ORIGINAL = ("generate", "train", "plot")  # the stages the tutorial-style reference compares with
BIN = Path(sys.executable).parent


def timed(command: list[str], cwd: Path, env: dict, output: list | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    if output is not None:
        output.append(done.stdout)
    return time.perf_counter() - started


def train_summary(stdout: str) -> str:
    """The train stage's own one-line summary: its time, training's and logging's."""
    return next(line for line in stdout.splitlines() if line.startswith("done in"))


def tune_summary(stdout: str) -> str:
    """The tune stage's own one-line summary: its time, phase by phase."""
    line = next(line for line in stdout.splitlines() if line.startswith("tuned "))
    return line.split("; best")[0]


def fresh_project(base: Path, code: Path = ROOT, params: Path | None = None) -> Path:
    """A git + DVC project in ``base`` with the files and code of the checkout at ``code``."""
    root = base / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(code / name, root / name)
    if params is not None:
        shutil.copy(params, root / "params.yaml")
    shutil.copytree(code / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    for package in ("pipeline", "stages"):
        shutil.copytree(
            code / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    return root


# Run in a stage's own process: at its exit, the modules it imported from outside the project, in
# the order it imported them, go to the file named by $LRSCHED_BENCH_MODULES.
TRACE = """
import atexit, os, sys
def dump():
    ours = ("pipeline", "stages", "__main__")
    names = [n for n in list(sys.modules) if n.split(".")[0] not in ours]
    open(os.environ["LRSCHED_BENCH_MODULES"], "w").write("\\n".join(names))
atexit.register(dump)
from pipeline.cli.main import main
sys.argv[0] = "lrsched"
main()
"""

# What an import floor process runs: every module a stage imported, and nothing else.
IMPORT_ONLY = """
import importlib, sys
for name in open(sys.argv[1]).read().split():
    try:
        importlib.import_module(name)
    except Exception:  # a module that only exists once its parent built it (six.moves, say)
        pass
"""


def import_floor(project: Path, env: dict) -> float:
    """Seconds for three processes that only import what generate, train and plot import: the
    stages' start-up cost, below which no rewrite of their own code can go."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    total = 0.0
    for stage in ORIGINAL:
        modules = project / f"{stage}.modules"
        traced = {**env, "LRSCHED_BENCH_MODULES": str(modules)}
        arguments = shlex.split(stages[stage]["cmd"])[1:]
        timed([sys.executable, "-c", TRACE, *arguments], project, traced)
        total += timed([sys.executable, "-c", IMPORT_ONLY, str(modules)], project, env)
    return total


def set_seeds(params_path: Path, seeds: int) -> None:
    text = params_path.read_text()
    params_path.write_text(text.replace("  seeds: 1 ", f"  seeds: {seeds} ", 1))


def bench_env(code: Path) -> dict[str, str]:
    """The environment a stage runs in, importing the code of the checkout at ``code``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(code)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def compare(revision: str, repeat: int, params: Path | None) -> None:
    """Each stage alone, this checkout's code against ``revision``'s, taking turns."""
    with tempfile.TemporaryDirectory() as scratch:
        old = Path(scratch) / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "archive", revision], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        codes = {"this checkout": ROOT, revision: old}
        timings = {(name, stage): [] for name in codes for stage in (*STAGES, "repro")}
        for round_ in range(repeat):
            for name, code in codes.items():
                with tempfile.TemporaryDirectory() as run_dir:
                    project, env = fresh_project(Path(run_dir), code, params), bench_env(code)
                    timings[name, "repro"].append(timed(["dvc", "repro"], project, env))
                    for stage in STAGES:
                        command = ["dvc", "repro", "-f", "-s", stage]
                        timings[name, stage].append(timed(command, project, env))
            print(f"round {round_ + 1} of {repeat} done", file=sys.stderr)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(f"machine: {machine}; params: {params or 'params.yaml'}")
    print(f"median of {repeat} runs each, seconds (the runs in brackets)\n")
    print(f"| measurement | this checkout | {revision} | ratio |")
    print("| --- | ---: | ---: | ---: |")
    labels = {"repro": "`dvc repro`: all 4 stages, fresh project"}
    for stage in ("repro", *STAGES):
        new, old_runs = timings["this checkout", stage], timings[revision, stage]
        ratio = statistics.median(new) / statistics.median(old_runs)
        cells = [f"{statistics.median(r):.1f} ({', '.join(f'{v:.1f}' for v in r)})"
                 for r in (new, old_runs)]  # fmt: skip
        label = labels.get(stage, f"`dvc repro -f -s {stage}`")
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--against", metavar="REV", help="also time git revision REV's code")
    parser.add_argument("--params", type=Path, help="with --against: this params file")
    arguments = parser.parse_args()
    repeat = arguments.repeat
    if arguments.against:
        compare(arguments.against, repeat, arguments.params)
        return
    env = bench_env(ROOT)
    timings: dict[str, list[float]] = {
        "reference": [], "repro": [], "noop": [], "sweep": [], "floor": [],
        **{s: [] for s in STAGES},
    }  # fmt: skip
    outputs: dict[str, list[str]] = {"repro": [], "sweep": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            uri = f"sqlite:///{Path(scratch) / 'reference.db'}"
            script = str(ROOT / "scripts" / "reference_tutorial.py")
            timings["reference"].append(timed([sys.executable, script, uri], ROOT, env))
        with tempfile.TemporaryDirectory() as scratch:
            project = fresh_project(Path(scratch))
            timings["repro"].append(timed(["dvc", "repro", "-f"], project, env, outputs["repro"]))
            timings["noop"].append(timed(["dvc", "repro"], project, env))
            for stage in STAGES:  # each alone, on the store the full run filled
                timings[stage].append(timed(["dvc", "repro", "-f", "-s", stage], project, env))
            timings["floor"].append(import_floor(project, env))
            set_seeds(project / "params.yaml", 100)
            timings["sweep"].append(timed(["dvc", "repro"], project, env, outputs["sweep"]))

    median = {key: statistics.median(values) for key, values in timings.items()}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"median of {repeat} runs each, seconds\n")
    print("| measurement | median (s) | runs (s) |")
    print("| --- | ---: | --- |")
    timings["original"] = [sum(run) for run in zip(*(timings[s] for s in ORIGINAL), strict=True)]
    median["original"] = statistics.median(timings["original"])
    rows = [
        ("reference: tutorial loop, 7 schedulers x 1000 steps, log_metric per value", "reference"),
        ("`dvc repro -f`: all 4 stages, the tuned comparison included", "repro"),
        *((f"`dvc repro -f -s {stage}`: the stage alone", stage) for stage in STAGES),
        ("generate + train + plot, each alone: the tutorial's three stages", "original"),
        ("import floor: three processes importing only what those stages import", "floor"),
        ("`dvc repro` with nothing changed", "noop"),
        ("sweep: `train.seeds: 100`, 11 schedules x 100 seeds x 1000 steps, all but tune", "sweep"),
    ]
    for label, key in rows:
        runs = ", ".join(f"{value:.1f}" for value in timings[key])
        print(f"| {label} | {median[key]:.1f} | {runs} |")
    speedup = median["reference"] / median["original"]
    print(f"\nspeed-up of the three original stages over the reference: {speedup:.1f}x")
    floor = median["original"] / median["floor"]
    print(f"the three original stages against their import floor: {floor:.2f}x")
    print("\nthe stages' own summaries (last run), default and sweep:")
    print(f"  tune: {tune_summary(outputs['repro'][-1])}")
    for key in ("repro", "sweep"):
        print(f"  train, {key}: {train_summary(outputs[key][-1])}")


if __name__ == "__main__":
    main()
