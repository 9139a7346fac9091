"""The same bytes on any x86-64 CPU: the train stage run as if on three kinds of CPU.

MKL and oneDNN pick their code path from the CPU; their variables below make them take the
path an older CPU would. Without the pins in ``pipeline/__init__.py`` these three runs give
three different sets of weights on an AVX-512 machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from tests.conftest import BIN, project_env, run, tiny_document

CPU_KINDS = {
    "AVX-512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
TRAIN = ["--train", "train.csv", "--test", "test.csv", "--curves", "curves", "--models",
         "models", "--metrics", "metrics.json", "--steps", "steps.csv", "--ranking",
         "ranking.md", "--report", "report.md"]  # fmt: skip


def digest(folder: Path) -> str:
    hashed = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashed.update(path.name.encode() + path.read_bytes())
    return hashed.hexdigest()


def test_three_kinds_of_cpu_give_the_same_bytes(tmp_path: Path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_document(epochs=200)))
    env = project_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run([str(BIN / "lrsched"), "generate", "--train", "train.csv", "--test", "test.csv"],
        tmp_path, env)  # fmt: skip
    results = {}
    for kind, variables in CPU_KINDS.items():
        run([str(BIN / "lrsched"), "train", *TRAIN], tmp_path, {**env, **variables})
        outputs = [tmp_path / name for name in ("models", "curves", "metrics.json")]
        results[kind] = (digest(outputs[0]), digest(outputs[1]), outputs[2].read_bytes())
    assert results["AVX2"] == results["AVX-512"]
    assert results["SSE4.2"] == results["AVX-512"]
