"""The tutorial's LogicNet: Linear -> tanh -> Linear, cross-entropy loss, argmax prediction."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from pipeline.core import portable

# The tutorial's own attribute names; per-layer param groups are named after them.
LAYER_NAMES = ("Liner1", "Liner2")


def logits(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """LogicNet's forward pass, Liner2(tanh(Liner1(x))), of one model or of models stacked
    first (then ``x`` per model or shared). Each layer's product runs in a fixed order rather
    than MKL's SGEMM, whose bits depend on the CPU: the same bytes on any machine."""
    hidden = torch.tanh(portable.linear(x, w1, b1))
    return portable.linear(hidden, w2, b2)


class LogicNet(nn.Module):
    def __init__(self, inputdim: int = 2, hiddendim: int = 3, outputdim: int = 2) -> None:
        super().__init__()
        self.Liner1 = nn.Linear(inputdim, hiddendim)
        self.Liner2 = nn.Linear(hiddendim, outputdim)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.Liner1.weight, self.Liner1.bias, self.Liner2.weight, self.Liner2.bias, x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(torch.softmax(self.forward(x), dim=1), dim=1)

    def getloss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.forward(x), y)


def param_groups(model: LogicNet, per_layer: bool) -> list[dict]:
    """One group for the whole model, or one named group per layer (the fine-tuning case)."""
    if not per_layer:
        return [{"params": list(model.parameters()), "name": "all"}]
    return [
        {"params": list(getattr(model, layer).parameters()), "name": layer} for layer in LAYER_NAMES
    ]


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    """The state dict as torch.save writes it, for an atomic write."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def stacked_weights(seeds: list[int], state_dicts: list[dict[str, torch.Tensor]]) -> dict:
    """Several seeds' weights in one state dict: each tensor gains a leading seed axis."""
    stacked = {name: torch.stack([sd[name] for sd in state_dicts]) for name in state_dicts[0]}
    return {"seeds": torch.tensor(seeds), **stacked}


def load_model(path: str, hidden_dim: int, index: int = 0) -> LogicNet:
    """The model of the ``index``-th seed from a file of :func:`stacked_weights`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = LogicNet(inputdim=2, hiddendim=hidden_dim, outputdim=2)
    model.load_state_dict({k: v[index] for k, v in saved.items() if k != "seeds"})
    return model.eval()


def seed_accuracies(path: str, features: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Accuracy of every seed's model in a :func:`stacked_weights` file, (seeds,) float64."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    w1, b1 = saved["Liner1.weight"], saved["Liner1.bias"]
    w2, b2 = saved["Liner2.weight"], saved["Liner2.bias"]
    predicted = logits(w1, b1, w2, b2, features).argmax(dim=2)  # every seed at once
    return (predicted == labels).sum(dim=1).numpy() / len(labels)
