"""When live evidence says a model should change its place, pure: the promotion rule (a shadow
replaces the champion) and the skill guard (the champion stops being served while it is worse
than the last close). docs/MODEL.md states both rules; this module is their one definition.

Both compare two forecasters on the same matured origins by the mean absolute error over the
horizon's steps, with the Diebold-Mariano test of evaluation/metrics.py (Newey-West variance
with lag horizon - 1, since the targets of neighbouring origins overlap).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from chronoprice.evaluation.metrics import diebold_mariano

# Matured origins a verdict needs, per timeframe: about 1.4 days of 1m, 3.5 days of 5m, 5 days
# of 15m, 12.5 days of 1h. Fewer cannot resolve the few-tenths-of-a-percent margins the shipped
# model has over the last close (docs/MODEL.md).
REQUIRED_ORIGINS = {"1m": 2000, "5m": 1000, "15m": 500, "1h": 300}
SIGNIFICANCE = 0.05


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A challenger against a reference over `origins` matured origins."""

    origins: int
    mae_ratio: float  # challenger's mean MAE over the steps / the reference's
    statistic: float  # Diebold-Mariano; negative: the challenger's errors are smaller
    p_value: float

    def better(self) -> bool:
        return self.statistic < 0 and self.p_value < SIGNIFICANCE

    def worse(self) -> bool:
        return self.statistic > 0 and self.p_value < SIGNIFICANCE


def compare_errors(challenger_errors: np.ndarray, reference_errors: np.ndarray, horizon: int) -> Comparison:
    """Each origin's mean absolute error over the steps, [N] for two forecasters on the same N
    origins in origin order; `horizon` steps each."""
    challenger = np.asarray(challenger_errors, dtype="float64")
    reference = np.asarray(reference_errors, dtype="float64")
    if challenger.shape != reference.shape:
        raise ValueError("both forecasters must be scored on the same origins")
    if len(challenger) < 2:
        return Comparison(len(challenger), float("nan"), 0.0, 1.0)
    statistic, p_value = diebold_mariano(challenger, reference, horizon)
    return Comparison(len(challenger), float(challenger.mean() / reference.mean()), statistic, p_value)


def pooled_errors(records: list[np.ndarray]) -> np.ndarray:
    """Several markets' records as the one a verdict is made on: each market's ([N, 3]: origin,
    the challenger's and the reference's mean absolute error over the steps) errors divided by
    the reference's mean over its record, so no market weighs more for its price, then averaged
    per origin over the markets that have it. [N, 3] over every origin, oldest first."""
    records = [record for record in records if len(record)]
    if not records:
        return np.empty((0, 3))
    scaled = np.concatenate([record / [1.0, record[:, 2].mean(), record[:, 2].mean()] for record in records])
    origins, position = np.unique(scaled[:, 0], return_inverse=True)
    counts = np.bincount(position)
    return np.column_stack([origins] + [np.bincount(position, weights=scaled[:, column]) / counts for column in (1, 2)])


def should_promote(shadow_vs_champion: Comparison, required: int) -> bool:
    """A shadow replaces the champion only on at least `required` matured origins shared with it,
    with a lower mean MAE at p < 0.05."""
    return shadow_vs_champion.origins >= required and shadow_vs_champion.better()


def guarded(champion_vs_naive: Comparison, required: int, guarded_now: bool) -> bool:
    """Whether the last close should be served instead of the champion's forecast.

    The guard goes on when the champion's last `required` matured origins are significantly worse
    than the last close's, and comes off once its MAE over them is no higher than the last
    close's: one significant bad stretch does not flip it back and forth around p = 0.05. With
    fewer origins nothing changes."""
    if champion_vs_naive.origins < required:
        return guarded_now
    if guarded_now:
        return champion_vs_naive.mae_ratio > 1.0
    return champion_vs_naive.worse()
