"""The model family: what ``model`` in params (and a workload's ``model``) declares.

Every member is a stack of layers that the batched engines train as one computation: an
optional convolution over small square images first, then dense layers, each followed by one
activation, the last giving the logits. LogicNet, the tutorial's 2-3-2 network, is the member
with one tanh hidden layer of 3 (``hidden: [3]``), and keeps its names ``Liner1``, ``Liner2``.

Layers are named as the tutorial names its own: ``Conv1`` for the convolution, then ``Liner1``,
``Liner2``, ... for the dense layers; these names key the state dict and the per-layer param
groups (``lr_lambda`` rules of LambdaLR).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictInt

from pipeline.core.validation import Frozen

Activation = Literal["tanh", "relu"]
MAX_HIDDEN_LAYERS = 8
Width = Annotated[StrictInt, Field(gt=0, le=4096)]
# A per-layer rule names one of these: Conv1, Liner1, Liner2, ...
LAYER_NAME = re.compile(r"^(Conv|Liner)([1-9][0-9]*)$")


class ConvParams(Frozen):
    """One convolution over a single-channel square image: ``channels`` filters of ``kernel``
    x ``kernel`` pixels, stride 1, no padding."""

    channels: Annotated[StrictInt, Field(gt=0, le=64)] = 4
    kernel: Annotated[StrictInt, Field(ge=1, le=16)] = 3


class ModelParams(Frozen):
    """A member of the family, as params declares it (the default: LogicNet)."""

    hidden: Annotated[tuple[Width, ...], Field(max_length=MAX_HIDDEN_LAYERS)] = (3,)
    activation: Activation = "tanh"
    conv: ConvParams | None = None

    def architecture(self, inputs: int, classes: int) -> Architecture:
        """The network for data of ``inputs`` features and ``classes`` classes; a ValueError
        says why this model cannot take such data (a convolution needs square images)."""
        conv = None
        if self.conv is not None:
            side = math.isqrt(inputs)
            if side * side != inputs:
                raise ValueError(
                    f"a convolution needs square images; these data have {inputs} features"
                )
            if self.conv.kernel > side:
                raise ValueError(
                    f"kernel {self.conv.kernel} is larger than the {side}x{side} image"
                )
            conv = Convolution(side, self.conv.kernel, self.conv.channels)
        return Architecture(inputs, classes, tuple(self.hidden), self.activation, conv)


@dataclass(frozen=True)
class Convolution:
    side: int  # the image is side x side pixels, one channel
    kernel: int
    channels: int

    @property
    def positions(self) -> int:
        """Where the kernel fits: (side - kernel + 1) ** 2 output pixels per filter."""
        return (self.side - self.kernel + 1) ** 2

    def patches(self) -> np.ndarray:
        """``(positions, kernel * kernel)``: the pixel index of each tap of the kernel at each
        position, row-major, as ``torch.nn.functional.unfold`` orders them."""
        reach = self.side - self.kernel + 1
        rows, columns = np.meshgrid(np.arange(reach), np.arange(reach), indexing="ij")
        taps_r, taps_c = np.meshgrid(np.arange(self.kernel), np.arange(self.kernel), indexing="ij")
        index = (rows.reshape(-1, 1) + taps_r.reshape(1, -1)) * self.side + (
            columns.reshape(-1, 1) + taps_c.reshape(1, -1)
        )
        return index.astype(np.int64)


@dataclass(frozen=True)
class Layer:
    """One layer as the engines see it: ``fan_out`` outputs, each a sum over ``fan_in`` inputs
    (a convolution's: its kernel's taps, at every position), then ``activation``."""

    name: str
    fan_in: int
    fan_out: int
    activation: str  # "tanh", "relu", or "identity" for the logits
    weight_shape: tuple[int, ...]  # as torch's module holds it (Conv2d's: (out, 1, k, k))


@dataclass(frozen=True)
class Architecture:
    inputs: int
    classes: int
    hidden: tuple[int, ...]
    activation: str
    conv: Convolution | None = None

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        found, width = [], self.inputs
        if self.conv is not None:
            taps = self.conv.kernel * self.conv.kernel
            shape = (self.conv.channels, 1, self.conv.kernel, self.conv.kernel)
            found.append(Layer("Conv1", taps, self.conv.channels, self.activation, shape))
            width = self.conv.positions * self.conv.channels
        widths = (*self.hidden, self.classes)
        for number, out in enumerate(widths, start=1):
            activation = "identity" if number == len(widths) else self.activation
            found.append(Layer(f"Liner{number}", width, out, activation, (out, width)))
            width = out
        return tuple(found)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The state dict's keys, in its order: each layer's weight, then its bias."""
        return tuple(f"{layer.name}.{kind}" for layer in self.layers for kind in ("weight", "bias"))

    def describe(self) -> str:
        """``Conv1(3x3, 4) -> Liner1(144, 16) -> ...``, for reports and logs."""
        parts = []
        for layer in self.layers:
            if len(layer.weight_shape) == 4:
                k = layer.weight_shape[-1]
                parts.append(f"{layer.name}({k}x{k}, {layer.fan_out}) -> {layer.activation}")
            else:
                parts.append(f"{layer.name}({layer.fan_in}, {layer.fan_out})")
                if layer.activation != "identity":
                    parts.append(layer.activation)
        return " -> ".join(parts)


LOGICNET = ModelParams().architecture(2, 2)
