"""The GPU path: device selection everywhere; training on CUDA where a GPU is present.

Without CUDA the GPU tests skip with a reason; the device-selection tests run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.problems import data
from pipeline.trainer.batch import Replicate, Setup
from pipeline.trainer.batched import train_batch
from pipeline.trainer.runtime import make_deterministic, select_device
from tests.conftest import tiny_document

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


def test_auto_picks_what_torch_sees_and_cuda_without_a_gpu_is_a_clear_error():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"train\.device is 'cuda' but torch sees no CUDA"):
            select_device("cuda")


def _train(device: torch.device):
    make_deterministic()
    params = parse_params(tiny_document(epochs=200))
    seeds = (42, 43)
    noise = params.data.noise
    datasets = {(s, noise): data.generate(params.data.n_samples, noise, s) for s in seeds}
    replicates = [
        Replicate(spec, s, params.train.lr, noise) for spec in params.schedules for s in seeds
    ]
    return train_batch(replicates, Setup.of(params), datasets, device)


@pytest.mark.gpu
@needs_cuda
def test_cuda_runs_are_bitwise_repeatable_and_close_to_the_cpu():
    first, second = _train(torch.device("cuda")), _train(torch.device("cuda"))
    np.testing.assert_array_equal(first.losses, second.losses)  # deterministic on one GPU
    for a, b in zip(first.state_dicts, second.state_dicts, strict=True):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    on_cpu = _train(torch.device("cpu"))
    np.testing.assert_array_equal(first.rates, on_cpu.rates)  # rates come from torch on the CPU
    difference = np.abs(first.losses - on_cpu.losses).max()
    print(f"largest loss difference CUDA vs CPU over every run and step: {difference:.3g}")
    assert difference < 1e-4
