"""A run's trained network (LogicNet, or any perceptron of the family) as an MLflow model:
points in, classes and probabilities out.

Points come as a DataFrame with columns ``x1`` and ``x2`` (read by name, in any order) or as a
plain ``(n, 2)`` array of floats (read by position: x1, then x2). The signature's inputs are
therefore two unnamed doubles: MLflow checks their count and type and hands the frame on with
its names, where named inputs would refuse an array ("Model is missing inputs").

Logged with MLflow's ``python_function`` flavor, so that MLflow's own tools load it:
``mlflow.pyfunc.load_model("runs:/<run>/model").predict(points)``, ``mlflow models serve``,
the Model Registry. The model is this file (logged as code, never pickled) and the run's
weights as a ``.npz`` artifact; a run over several seeds is served by its first seed's weights.

The forward pass here is numpy's (float32, as torch computes it in training): the dense layers
``Liner1``, ``Liner2``, ... of the weights, each hidden one followed by the activation the
weights file names. A network this small needs no torch to predict, so neither logging (in the
MLflow process, which then never imports torch) nor serving pays torch's import, and the model
needs only mlflow, numpy and pandas. ``tests/test_models.py`` holds its answers to those of
the PyTorch model.
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, Schema, TensorSpec

INPUT_COLUMNS = ("x1", "x2")
OUTPUT_COLUMNS = ("class", "probability_0", "probability_1")
WEIGHTS = "weights"  # the artifact's key: a .npz of one seed's state dict
_INPUTS: list[ColSpec | TensorSpec] = [ColSpec("double") for _ in INPUT_COLUMNS]
_OUTPUTS: list[ColSpec | TensorSpec] = [ColSpec("long", "class")]
_OUTPUTS += [ColSpec("double", name) for name in OUTPUT_COLUMNS[1:]]
SIGNATURE = ModelSignature(inputs=Schema(_INPUTS), outputs=Schema(_OUTPUTS))
# What loading the model imports, pinned to the versions installed where it was logged. Written
# out, so that MLflow infers nothing at log time (inferring loads the model and traces imports).
REQUIREMENTS = ("mlflow", "numpy", "pandas")
ACTIVATION = "activation"  # the weights file's entry naming the hidden layers' activation


def pip_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


class NetworkClassifier(PythonModel):
    """``predict``: points (a frame with ``x1``, ``x2``, or an (n, 2) array) -> ``class``,
    ``probability_0``, ``probability_1``."""

    def load_context(self, context: PythonModelContext) -> None:
        with np.load(context.artifacts[WEIGHTS]) as saved:
            names = sorted(
                (key.removesuffix(".weight") for key in saved.files if key.endswith(".weight")),
                key=lambda name: int(name.removeprefix("Liner")),
            )
            self.layers = [
                (
                    saved[f"{layer}.weight"].astype(np.float32),
                    saved[f"{layer}.bias"].astype(np.float32),
                )
                for layer in names
            ]
            self.activation = str(saved[ACTIVATION]) if ACTIVATION in saved.files else "tanh"

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        points = _points(model_input)
        # The network's forward pass (LogicNet's: Liner2(tanh(Liner1(x)))), on float32 points.
        logits = points
        for number, (weight, bias) in enumerate(self.layers, start=1):
            logits = logits @ weight.T + bias
            if number < len(self.layers):
                logits = np.tanh(logits) if self.activation == "tanh" else np.maximum(logits, 0)
        shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return pd.DataFrame(
            {
                "class": probabilities.argmax(axis=1).astype(np.int64),
                "probability_0": probabilities[:, 0],
                "probability_1": probabilities[:, 1],
            }
        )


def _points(model_input: object) -> np.ndarray:
    """(n, 2) float32 points: a frame's ``x1``, ``x2`` by name; an array's (MLflow makes it a
    frame with columns 0 and 1) by position."""
    frame = pd.DataFrame(model_input)
    if all(name in frame.columns for name in INPUT_COLUMNS):
        return frame[list(INPUT_COLUMNS)].to_numpy(np.float32)
    if list(frame.columns) == list(range(len(INPUT_COLUMNS))):
        return frame.to_numpy(np.float32)
    raise ValueError(
        f"expected a frame with columns {list(INPUT_COLUMNS)} or an (n, 2) array;"
        f" got columns {list(frame.columns)}"
    )


def input_example(features: np.ndarray) -> pd.DataFrame:
    """A few points, as the model takes them: shown in the UI, kept beside the model."""
    return pd.DataFrame(features[:5], columns=list(INPUT_COLUMNS))


def log(weights: dict[str, np.ndarray], example: pd.DataFrame, run_id: str) -> str:
    """Log a model of these weights (one seed's state dict as numpy arrays, and its
    ``activation``) to run
    ``run_id`` at artifact name ``model``, without making the run the active one; the answer:
    its ``models:/`` id."""
    import mlflow.pyfunc
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="lrsched-model-") as folder:
        path = Path(folder) / "weights.npz"
        np.savez(path, allow_pickle=False, **weights)
        # Logged as code (this file), not as a pickled object: loading the model then runs this
        # module, never unpickles code.
        info = Model.log(
            artifact_path=None,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            name="model",
            python_model=__file__,
            artifacts={WEIGHTS: str(path)},
            signature=SIGNATURE,
            input_example=example,
            pip_requirements=pip_requirements(),
        )
    return info.model_id


# What MLflow loads when it runs this file as the model's code.
set_model(NetworkClassifier())
