"""The model artifact on disk: `<name>.keras`, `<name>.tflite`, `<name>.onnx`, `<name>.npz` (the
weights for the native engine) and `<name>.json` metadata.

This module never imports TensorFlow, so the LiteRT serving path can read metadata cheaply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

REQUIRED_METADATA = ("version", "window", "horizon", "feature", "intervals")


class ModelUnavailable(RuntimeError):
    """The model files are missing or damaged; the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class ModelArtifact:
    base: Path  # path without extension, e.g. models/chronoprice-lstm

    @property
    def keras_path(self) -> Path:
        return self.base.with_suffix(".keras")

    @property
    def tflite_path(self) -> Path:
        return self.base.with_suffix(".tflite")

    @property
    def onnx_path(self) -> Path:
        return self.base.with_suffix(".onnx")

    @property
    def weights_path(self) -> Path:
        return self.base.with_suffix(".npz")

    @property
    def metadata_path(self) -> Path:
        return self.base.with_suffix(".json")


def artifact_at(path: Path | str) -> ModelArtifact:
    """Accept `models/name`, `models/name.keras|.tflite|.onnx|.npz|.json`, or a folder holding one model."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.json"))
        if len(candidates) != 1:
            raise ModelUnavailable(f"{path} holds {len(candidates)} model metadata files; pass --model models/NAME")
        path = candidates[0]
    if path.suffix in (".keras", ".tflite", ".onnx", ".npz", ".json"):
        path = path.with_suffix("")
    return ModelArtifact(path)


def timeframe_siblings(path: Path | str, timeframes) -> dict[str, Path]:
    """The models shipped beside a model for other timeframes: `<name>-5m.json` etc. next to
    `<name>`, by timeframe (only those in `timeframes`)."""
    base = artifact_at(path).base
    found = {each: base.with_name(f"{base.name}-{each}") for each in timeframes}
    return {each: sibling for each, sibling in found.items() if sibling.with_suffix(".json").exists()}


def content_version(*files: Path) -> str:
    """A short content hash of the weight files: the model version stored with every forecast.
    The .onnx graph and the .npz are derived from the .keras weights, so they are not hashed:
    re-exporting them keeps the version."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return "lstm-" + digest.hexdigest()[:12]


def read_metadata(artifact: ModelArtifact) -> dict:
    try:
        metadata = json.loads(artifact.metadata_path.read_text())
    except FileNotFoundError:
        raise ModelUnavailable(
            f"model metadata {artifact.metadata_path} not found; train one with "
            "`python -m chronoprice train --csv PATH` or pass --model"
        ) from None
    except (OSError, ValueError) as error:
        raise ModelUnavailable(f"model metadata {artifact.metadata_path} is unreadable ({error}); restore it or retrain") from None
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if "intervals" in metadata and "score_quantile" not in metadata["intervals"]:
        missing.append("intervals.score_quantile")
    if missing:
        raise ModelUnavailable(f"model metadata {artifact.metadata_path} lacks {', '.join(missing)}; retrain the model")
    return metadata


def write_metadata(artifact: ModelArtifact, metadata: dict) -> None:
    artifact.metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
