"""Arithmetic that gives the same bits on every x86-64 CPU, Intel or AMD, old or new.

torch hands two kinds of work to MKL on the CPU, and MKL picks its code by the CPU's vendor and
model even under ``MKL_CBWR=COMPATIBLE``: matrix products (SGEMM) and, on tensors of more than a
few values, ``sqrt`` (its vector math library, which is not even correctly rounded: 20% of
float32 square roots differ from IEEE's in the last bit). A 2-3-2 network needs neither:

- :func:`linear` multiplies and adds element by element, in one fixed order, so no BLAS runs;
- :func:`sqrt` takes numpy's square root on the CPU, the correctly rounded IEEE operation.

Everything else the pipeline computes (tanh, log-softmax, sums) runs torch's own kernels, which
``ATEN_CPU_CAPABILITY=default`` (set in ``pipeline/__init__.py``) fixes to one code path.
``tests/test_portability.py`` runs the stages under qemu as three other CPUs to prove it.
"""

from __future__ import annotations

import numpy as np
import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T + bias`` as ``nn.Linear`` computes it, with the sum in a fixed order.

    ``x`` is ``(..., samples, in)``, ``weight`` ``(..., out, in)``, ``bias`` ``(..., out)``:
    leading axes (a run or a seed axis) broadcast, as in a batched product.
    """
    products = x.unsqueeze(-2) * weight.unsqueeze(-3)  # (..., samples, out, in)
    return products.sum(dim=-1) + bias.unsqueeze(-2)


def sqrt(values: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root (on a GPU, torch's own already is)."""
    if values.device.type != "cpu" or values.requires_grad:
        return values.sqrt()
    return torch.from_numpy(np.sqrt(values.numpy()))
