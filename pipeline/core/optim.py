"""The optimizer a run trains with: the tutorial's Adam, or SGD."""

from __future__ import annotations

import torch


def make_optimizer(
    groups: list[dict], kind: str, lr: float, momentum: float = 0.0
) -> torch.optim.Optimizer:
    # foreach=False: the per-tensor path is the reference the tutorial's loop also takes on the
    # CPU, so a run and its literal transcription match bit for bit on any device.
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=False)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=False)
    raise ValueError(f"unknown optimizer {kind!r}; allowed: adam, sgd")
