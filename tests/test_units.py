"""How many processes a stage runs its units in: one per CPU it may use, not per CPU of the
machine, so that ``taskset`` or a container's CPU set is obeyed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.servers import require

COUNT = """
from matplotlib.figure import Figure
from pipeline.reporting.figures import Renderer
from pipeline.engines.units import usable_cpus
with Renderer({"a": Figure, "b": Figure}) as renderer:
    pngs = renderer.results()
print(usable_cpus(), "forked" if renderer.pool else "in-process", len(set(pngs.values())))
"""


def count(*prefix: str) -> list[str]:
    command = [*prefix, sys.executable, "-c", COUNT]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.mark.pipeline
@pytest.mark.parametrize("cpus", ["0", "0,1"])
def test_a_stage_counts_the_cpus_it_may_use(cpus):
    require("taskset (util-linux)", shutil.which("taskset") is not None)
    allowed = {int(cpu) for cpu in cpus.split(",")}
    if not allowed <= os.sched_getaffinity(0):
        pytest.skip(f"this machine has no CPUs {cpus} to pin to")
    usable, renderer, distinct = count("taskset", "--cpu-list", cpus)
    assert int(usable) == len(allowed)
    assert renderer == ("in-process" if len(allowed) == 1 else "forked")
    assert distinct == "1"  # two empty figures: the same PNG, however they were drawn
