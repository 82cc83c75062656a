"""What the model registry (store/registry.py) keeps of a model's metadata, pure: where its
training data came from and which span it covered, its architecture and input form, and its
validation and holdout scores against the last close."""

from __future__ import annotations

import numpy as np

DEFAULT_TIMEFRAME = "1m"  # of models whose metadata names none: the shipped one is trained on 1-minute candles


def model_timeframe(metadata: dict) -> str:
    return metadata.get("timeframe", DEFAULT_TIMEFRAME)


def registry_details(metadata: dict) -> dict:
    training = metadata.get("training", {})
    folds = metadata.get("selection", {}).get("folds", [])
    holdout = metadata.get("holdout", [])
    return {
        "data": training.get("data"),
        "first_ts": training.get("first_ts"),
        "last_ts": training.get("last_ts"),
        "trained_until_ts": training.get("trained_until_ts"),
        "architecture": metadata.get("architecture"),
        "input": metadata["feature"]["name"],
        "window": metadata["window"],
        "horizon": metadata["horizon"],
        "validation_mae_ratio": _mean([ratio for fold in folds for ratio in fold.get("mae_ratio", [])]),
        "holdout_mae_ratio": _mean([row["mae_ratio"] for row in holdout]),
        "holdout_mae_ratio_by_step": [round(float(row["mae_ratio"]), 5) for row in holdout],
    }


def _mean(values: list) -> float | None:
    return round(float(np.mean(values)), 5) if values else None


def first_live_origin_ts(details: dict) -> int:
    """The first origin a model may forecast for its live record: after every candle its
    training run saw (validation and holdout included), so no record is scored in-sample."""
    return int(details.get("last_ts") or 0) + 1
