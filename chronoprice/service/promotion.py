"""The promotion rule acting on the live record (docs/MODEL.md; the rule itself is
evaluation/verdicts.py): a shadow replaces its timeframe's champion once, on a fresh window of
the required number of matured origins shared with it on the watched markets, its mean MAE over
the steps is lower at p < 0.05. Where no model is champion the last close is served, and a
shadow faces the last close instead. Run by the scheduler's process only."""

from __future__ import annotations

import logging

import numpy as np

from chronoprice.evaluation.verdicts import (
    compare_errors,
    pooled_errors,
    should_promote,
)
from chronoprice.market.source import Market
from chronoprice.store.records import origin_mean_errors
from chronoprice.store.registry import (
    ModelEntry,
    StatusChange,
    change_status,
    checked_through,
    read_models,
    save_checked_through,
)
from chronoprice.store.schema import Database

log = logging.getLogger(__name__)
CHECK_SECONDS = 60.0  # how often the scheduler looks for shadows with a fresh window to judge


def shared_record(db: Database, market: Market, shadow: ModelEntry, champion: ModelEntry | None,
                  after_origin_ts: int, needed: int) -> np.ndarray:
    """[N, 3] on the market's origins after `after_origin_ts` that both have matured, oldest
    first: origin, the shadow's and the champion's (or the last close's) mean absolute error
    over the steps; the newest `needed` of them."""
    horizon = shadow.details["horizon"]
    own = origin_mean_errors(db, market, shadow.version, horizon, after_origin_ts, 2 * needed)
    if champion is None:
        return own[-needed:]
    served = origin_mean_errors(db, market, champion.version, horizon, after_origin_ts, 2 * needed)
    _, mine, theirs = np.intersect1d(own[:, 0], served[:, 0], return_indices=True)
    return np.column_stack([own[mine, :2], served[theirs, 1]])[-needed:]


def check_promotions(db: Database, markets: list[Market], required: dict[str, int], now_ms: int) -> list[StatusChange]:
    """Judge every shadow that has a fresh window on the watched `markets` of its timeframe, and
    promote the first that wins; returns the changes made."""
    changes = []
    for timeframe in sorted({market.timeframe for market in markets}):
        entries = read_models(db, timeframe, ("champion", "shadow"))
        champion = next((entry for entry in entries if entry.status == "champion"), None)
        for shadow in (entry for entry in entries if entry.status == "shadow"):
            if champion is not None and champion.details.get("horizon") != shadow.details["horizon"]:
                continue  # steps of different horizons are not one comparison
            needed = required[timeframe]
            after = checked_through(db, shadow.version)
            record = pooled_errors([shared_record(db, market, shadow, champion, after, needed)
                                    for market in markets if market.timeframe == timeframe])[-needed:]
            if len(record) < needed:
                continue
            comparison = compare_errors(record[:, 1], record[:, 2], shadow.details["horizon"])
            save_checked_through(db, shadow.version, int(record[-1, 0]))
            against = champion.version if champion else "the last close"
            log.info("promotion check of %s against %s on %d origins: MAE ratio %.4f, p %.4f", shadow.version, against,
                     comparison.origins, comparison.mae_ratio, comparison.p_value, extra={"timeframe": timeframe})
            if should_promote(comparison, needed):
                reason = (f"promoted: MAE {comparison.mae_ratio:.4f} of {against}'s over {comparison.origins} matured origins, "
                          f"Diebold-Mariano p {comparison.p_value:.4f}")
                changes.append(change_status(db, shadow.version, "champion", reason, now_ms))
                log.warning("model %s is the %s champion (%s)", shadow.version, timeframe, reason)
                break
    return changes
