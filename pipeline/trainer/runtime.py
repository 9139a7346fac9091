"""What every trainer shares: the device, deterministic kernels, the tutorial's tensors, the
initial weights of a seed, and the final metrics of a trained model."""

from __future__ import annotations

import os

import torch

from pipeline.problems.architecture import Architecture
from pipeline.problems.data import Dataset
from pipeline.problems.model import FamilyNet


def select_device(requested: str) -> torch.device:
    """``cpu``, ``cuda`` (an error without a GPU) or ``auto`` (CUDA when there is one)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use cpu or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def make_deterministic() -> None:
    """Same inputs, same bits: deterministic kernels and one CPU thread."""
    # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # What torch.use_deterministic_algorithms(True) sets for eager kernels, without the import
    # of torch._inductor it also does (for an inductor flag; nothing here compiles): 1.2 s of
    # every stage's start.
    torch._C._set_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # The family's networks are far too small to gain from threads, and one thread fixes the
    # order of every floating-point reduction whatever the machine's core count.
    torch.set_num_threads(1)


def tensors(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's conversion: float32 features, int64 labels."""
    features = torch.from_numpy(dataset.features).to(torch.float32).to(device)
    labels = torch.from_numpy(dataset.labels).to(torch.int64).to(device)
    return features, labels


def initial_model(architecture: Architecture, device: torch.device, seed: int) -> FamilyNet:
    """Every run of a seed starts from the same weights, drawn from it as torch draws them."""
    torch.manual_seed(seed)
    return FamilyNet(architecture).to(device)


@torch.no_grad()
def evaluate(
    model: FamilyNet,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
) -> dict[str, float]:
    """Loss and accuracy of the trained model on both sets."""
    return {
        "final_loss": model.getloss(train_x, train_y).item(),
        "train_accuracy": _accuracy(model, train_x, train_y),
        "test_loss": model.getloss(test_x, test_y).item(),
        "test_accuracy": _accuracy(model, test_x, test_y),
    }


def _accuracy(model: FamilyNet, x: torch.Tensor, y: torch.Tensor) -> float:
    # Counted, then divided in float64: 0.948, not float32's 0.9480000138282776.
    return (model.predict(x) == y).sum().item() / len(y)
