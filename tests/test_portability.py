"""The same bytes on every x86-64 CPU: each stage run natively and as three other CPUs.

Debian's ``qemu-user`` runs a program while reporting another CPU model through CPUID, so MKL,
oneDNN, OpenBLAS, glibc's libm and numpy all pick the code they would pick on that CPU (the
host's settings that pin a BLAS to its own CPU's kernels are left out there). The native run is
this machine's CPU (CI's: an AMD EPYC with AVX-512); the emulated ones are an Intel with AVX2
and FMA, an AMD with AVX2 and FMA, and an Intel without AVX at all. Every output of every stage
must be byte for byte the native one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core import portable
from tests.conftest import LEAN_WORKLOADS, default_document, project_env, run, tiny_document
from tests.servers import require

QEMU = shutil.which("qemu-x86_64")
# An emulated CPU's four stages take about 2 minutes on a busy day. A run past this is killed:
# the runs go in threads, which the suite's per-test time limit cannot stop.
STAGE_TIMEOUT_S = 420
CPU_MODELS = {
    "Intel Skylake (AVX2, FMA)": "Skylake-Client-v1",
    "AMD EPYC Zen 1 (AVX2, FMA)": "EPYC-v1",
    "Intel Nehalem (SSE4.2, no AVX)": "Nehalem-v1",
}
# What pins a BLAS to one CPU's kernels: a machine's own setting, which another CPU does not
# inherit (CI's machines set OPENBLAS_CORETYPE=Haswell, whose AVX2 kernels Nehalem lacks).
CPU_PINS = ("OPENBLAS_", "GOTOBLAS_", "MKL_DEBUG_CPU_TYPE", "MKL_ENABLE_INSTRUCTIONS")
# Each stage's options, as dvc.yaml's command gives them.
STAGES = {
    "generate": {"train": "data/train.csv", "test": "data/test.csv",
                 "workloads": "data/workloads.csv"},
    "tune": {"data": "data/workloads.csv", "out": "outputs/tuning",
             "metrics": "outputs/tuning.json"},
    "train": {"train": "data/train.csv", "test": "data/test.csv", "curves": "outputs/curves",
              "models": "outputs/models", "metrics": "outputs/metrics.json",
              "steps": "outputs/steps.csv", "ranking": "outputs/ranking.md",
              "report": "outputs/report.md", "tuned-claims": "outputs/tuning/claims.md"},
    "plot": {"train": "data/train.csv", "test": "data/test.csv", "curves": "outputs/curves",
             "models": "outputs/models", "metrics": "outputs/metrics.json",
             "figures": "figures"},
}  # fmt: skip


def stage_command(stage: str) -> list[str]:
    """``python -m pipeline STAGE --train data/train.csv ...``, as dvc.yaml's command says."""
    arguments = [a for key, path in STAGES[stage].items() for a in (f"--{key}", path)]
    return [sys.executable, "-m", "pipeline", stage, *arguments]


# The trained schedules: between them every path of the trainer (a closed form, a rule per
# layer, a scheduler that watches the loss, a cycled momentum, chained schedulers, a growing
# mini-batch). The other six take the same paths and add only figure panels to emulate.
TRAINED = ("manual", "ReduceLROnPlateau", "LambdaLR", "warmup_cosine", "OneCycleLR",
           "growing_batch")  # fmt: skip


# Held out, so trained only by the re-runs: the family beyond LogicNet, a deep ReLU perceptron
# and a conv net on the digits' 8x8 images.
FAMILY_WORKLOADS = ("deep_relu", "digits")


def small_document() -> dict:
    """Tiny params, and a comparison small enough to emulate: four workloads (one tuned; held
    out: the circles and the family's two other models) and five schedules, which between them
    take every path of the tuning (closed-form rates, ReduceLROnPlateau's live scheduler,
    warm-up, a cycled momentum, a rule per layer of each model)."""
    document = tiny_document(epochs=120)
    document["schedulers"] = {name: document["schedulers"][name] for name in TRAINED}
    names = (*LEAN_WORKLOADS, *FAMILY_WORKLOADS)
    document["workloads"] = [
        {**w, "epochs": 30} for w in document["workloads"] if w["name"] in names
    ]
    keep = ("constant", "ReduceLROnPlateau", "warmup_cosine", "OneCycleLR", "LambdaLR")
    spaces = default_document()["search"]["spaces"]
    document["search"]["spaces"] = {k: spaces[k] for k in keep}
    document["tuning"]["target"]["trials"] = 4
    return document


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("data", "outputs", "figures")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


class Cpus:
    """This machine's CPUs, lent one at a time, first to the run that is furthest behind: the
    emulated runs, several times slower than the native one, then advance together and end
    together, rather than one left to finish alone on one CPU."""

    def __init__(self) -> None:
        self.free = sorted(os.sched_getaffinity(0))
        self.waiting: list[tuple[int, str]] = []
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def lend(self, stages_done: int, run_name: str) -> Iterator[int]:
        place = (stages_done, run_name)
        with self.changed:
            self.waiting.append(place)
            self.changed.wait_for(lambda: bool(self.free) and min(self.waiting) == place)
            self.waiting.remove(place)
            cpu = self.free.pop()
            self.changed.notify_all()  # a second free CPU goes to the next one behind
        try:
            yield cpu
        finally:
            with self.changed:
                self.free.append(cpu)
                self.changed.notify_all()


# Every stage, in order, in one interpreter: how an emulated CPU runs them. Under qemu-user the
# imports dominate (torch alone takes 10 s), and one process pays them once, not four times.
# The native run starts a process per stage, as DVC does, so the comparison also shows that
# sharing a process changes no byte.
ONE_PROCESS = """
import json, sys
from pipeline.cli.main import cli
for arguments in json.loads(sys.argv[1]):
    cli.main(arguments, prog_name="lrsched", standalone_mode=False)
"""


def reproduce(root: Path, emulate: list[str], cpus: Cpus) -> dict[str, str]:
    """Every stage in order in ``root`` (under ``emulate`` all in one process, on one CPU lent
    by ``cpus``); every output's digest.

    A stage that sees one CPU does all its work in its own process. With more, the tuning would
    spawn workers, which start the host's python afresh: qemu-user (without binfmt_misc) does
    not follow ``exec``, so their training would run unemulated; and the emulated process would
    ``fork`` while its threads run, what qemu-user has deadlocked on before. (The stage's
    MLflow process is spawned too, and runs natively: it writes to the store, not to outputs.)
    """
    env = {**project_env(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    (root / "params.yaml").write_text(yaml.safe_dump(small_document()))
    if emulate:  # another machine: its libraries find their kernels from its CPU alone
        env = {key: value for key, value in env.items() if not key.startswith(CPU_PINS)}
        stages = json.dumps([stage_command(stage)[3:] for stage in STAGES])
        commands = [[*emulate, sys.executable, "-c", ONE_PROCESS, stages]]
    else:
        commands = [stage_command(stage) for stage in STAGES]
    for done, command in enumerate(commands):
        with cpus.lend(done, root.name) as cpu:
            run(["taskset", "--cpu-list", str(cpu), *command], root, env, timeout=STAGE_TIMEOUT_S)
    return digests(root)


@pytest.fixture(scope="module")
def reproductions(tmp_path_factory) -> dict[str, dict[str, str] | BaseException]:
    """The native run and every emulated CPU's, all at once, each stage on one CPU of this
    machine: by name ("native" or the CPU model), the digests or what went wrong."""
    require("Debian's qemu-user (qemu-x86_64)", QEMU is not None)
    require("taskset (util-linux)", shutil.which("taskset") is not None)
    assert QEMU is not None
    emulations = {"native": [], **{model: [QEMU, "-cpu", model] for model in CPU_MODELS.values()}}
    cpus = Cpus()
    with ThreadPoolExecutor(len(emulations)) as pool:
        futures = {
            name: pool.submit(reproduce, tmp_path_factory.mktemp(name), emulate, cpus)
            for name, emulate in emulations.items()
        }
    return {name: future.exception() or future.result() for name, future in futures.items()}


@pytest.mark.emulation
@pytest.mark.timeout(900)  # the four emulated runs, on a busy day: the fixture's own limit holds
@pytest.mark.parametrize("model", CPU_MODELS.values(), ids=CPU_MODELS.keys())
def test_every_stage_gives_the_same_bytes_on_another_cpu(reproductions, model):
    native, emulated = reproductions["native"], reproductions[model]
    for outcome in (native, emulated):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(native, dict) and isinstance(emulated, dict)
    assert emulated.keys() == native.keys()
    assert len(native) > 20  # every stage's files: data, curves, models, figures...
    differ = sorted(name for name in native if emulated[name] != native[name])
    assert not differ, f"as {model}, these outputs differ from the native run: {differ}"


def test_the_portable_product_is_nn_linears_to_rounding():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 500, 2, generator=generator)
    weight, bias = torch.randn(7, 3, 2, generator=generator), torch.randn(7, 3, generator=generator)
    ours = portable.linear(x, weight, bias)
    for seed in range(7):
        reference = torch.nn.functional.linear(x[seed], weight[seed], bias[seed])
        torch.testing.assert_close(ours[seed], reference, rtol=1e-6, atol=1e-6)
        assert torch.equal(portable.linear(x[seed], weight[seed], bias[seed]), ours[seed])


def test_the_portable_square_root_is_correctly_rounded():
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(1)) * 1e-3
    exact = torch.from_numpy((values.double().numpy() ** 0.5).astype("float32"))
    assert torch.equal(portable.sqrt(values), exact)  # float64's root, rounded once: IEEE's


@pytest.mark.pipeline
def test_a_fresh_clone_reproduces_the_committed_lock_byte_for_byte(tmp_path):
    """`make run` on a fresh clone: every hash in dvc.lock, outputs included, and a clean git."""
    from tests.conftest import GIT, ROOT

    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    clone = tmp_path / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    env = project_env(clone)
    run(["git", "init", "-q", "-b", "main"], clone, env)
    run([*GIT, "add", "-A"], clone, env)
    run([*GIT, "commit", "-qm", "clone"], clone, env)

    run(["dvc", "repro"], clone, env)
    written = yaml.safe_load((clone / "dvc.lock").read_text())
    committed = yaml.safe_load((ROOT / "dvc.lock").read_text())
    for stage, entry in committed["stages"].items():
        for out in entry.get("outs", []):
            mine = next(o for o in written["stages"][stage]["outs"] if o["path"] == out["path"])
            assert mine["md5"] == out["md5"], f"{stage}: {out['path']} is not what a run writes"
    assert written == committed
    assert run(["git", "status", "--porcelain"], clone, env).stdout == ""
