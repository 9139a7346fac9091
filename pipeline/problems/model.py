"""The model family's torch modules: LogicNet (the tutorial's) and every other member.

A :class:`FamilyNet` is built from an :class:`~pipeline.problems.architecture.Architecture`:
its layers are ``nn.Linear`` (and ``nn.Conv2d``) modules named ``Conv1``, ``Liner1``, ... so
that its state dict, its initial weights and its per-layer param groups are those torch gives
such a network. Its forward pass is :func:`logits`: each product in a fixed order, so that the
same weights give the same bits on any CPU.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from pipeline.core import portable
from pipeline.problems.architecture import LOGICNET, Architecture

# The tutorial's own attribute names; per-layer param groups are named after them.
LAYER_NAMES = LOGICNET.layer_names


def logits(
    architecture: Architecture, weights: list[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """The network's forward pass, of one model or of models stacked first (then ``x`` per
    model or shared): ``weights`` in state-dict order, ``x`` ``(..., samples, inputs)``.

    A convolution is a product over each position's patch of pixels (gathered, not computed),
    its outputs flattened position by position: ``(..., samples, positions * channels)``.
    """
    hidden = x
    for index, layer in enumerate(architecture.layers):
        weight, bias = weights[2 * index], weights[2 * index + 1]
        if len(layer.weight_shape) == 4:
            assert architecture.conv is not None
            patches = hidden[..., torch.from_numpy(architecture.conv.patches()).to(x.device)]
            samples, positions = patches.shape[-3], patches.shape[-2]
            flat = patches.reshape(*patches.shape[:-3], samples * positions, layer.fan_in)
            kernel = weight.reshape(*weight.shape[:-4], layer.fan_out, layer.fan_in)
            out = portable.linear(flat, kernel, bias)
            hidden = out.reshape(*out.shape[:-2], samples, positions * layer.fan_out)
        else:
            hidden = portable.linear(hidden, weight, bias)
        if layer.activation == "tanh":
            hidden = torch.tanh(hidden)
        elif layer.activation == "relu":
            hidden = torch.relu(hidden)
    return hidden


class FamilyNet(nn.Module):
    """One member of the family, its layers drawn in order as torch initialises them."""

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        self.architecture = architecture
        for layer in architecture.layers:
            if len(layer.weight_shape) == 4:
                kernel = layer.weight_shape[-1]
                setattr(self, layer.name, nn.Conv2d(1, layer.fan_out, kernel))
            else:
                setattr(self, layer.name, nn.Linear(layer.fan_in, layer.fan_out))
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.architecture, list(self.parameters()), x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(torch.softmax(self.forward(x), dim=1), dim=1)

    def getloss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.forward(x), y)


class LogicNet(FamilyNet):
    """The tutorial's network: Liner1 -> tanh -> Liner2, under the tutorial's signature."""

    def __init__(self, inputdim: int = 2, hiddendim: int = 3, outputdim: int = 2) -> None:
        super().__init__(Architecture(inputdim, outputdim, (hiddendim,), "tanh"))


def param_groups(model: FamilyNet, per_layer: bool) -> list[dict]:
    """One group for the whole model, or one named group per layer (the fine-tuning case)."""
    if not per_layer:
        return [{"params": list(model.parameters()), "name": "all"}]
    return [
        {"params": list(getattr(model, layer).parameters()), "name": layer}
        for layer in model.architecture.layer_names
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


def load_model(path: str, architecture: Architecture, index: int = 0) -> FamilyNet:
    """The model of the ``index``-th seed from a file of :func:`stacked_weights`."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = FamilyNet(architecture)
    model.load_state_dict({k: v[index] for k, v in saved.items() if k != "seeds"})
    return model.eval()


def seed_accuracies(
    path: str, architecture: Architecture, features: torch.Tensor, labels: torch.Tensor
) -> np.ndarray:
    """Accuracy of every seed's model in a :func:`stacked_weights` file, (seeds,) float64."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    weights = [saved[name] for name in architecture.parameter_names]
    predicted = logits(architecture, weights, features).argmax(dim=2)  # every seed at once
    return (predicted == labels).sum(dim=1).numpy() / len(labels)
