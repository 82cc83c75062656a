"""The market page's words: the KPIs, badges, banner, status line and verdict, from data already
read (callbacks.read_view). Pure: each says only what is true of the data it is given."""

from __future__ import annotations

import pandas as pd

from chronoprice.evaluation.metrics import (
    ERROR_WINDOW_HOURS,
    matured_metrics,
    undercovered,
)
from chronoprice.model.forecasters import NaiveBandForecaster
from chronoprice.service.guard import guard_text
from chronoprice.service.status import TickStatus
from chronoprice.web.dashboard.figures import SHOWN_CANDLES, Horizon, kpis


def _utc(ts: int | None) -> str:
    return pd.Timestamp(ts, unit="ms", tz="UTC").strftime("%H:%M UTC") if ts else "–"


def _price(value: float | None) -> str:
    return "–" if value is None else f"{value:,.2f}"


def _against_naive(ratio: float) -> str:
    difference = abs(ratio - 1) * 100
    if difference < 0.05:
        return "as accurate as"
    return f"{difference:.1f} % {'better' if ratio < 1 else 'worse'} than"


def verdict(matured: pd.DataFrame, horizon: Horizon) -> str:
    """One plain sentence on model vs naive, e.g. 'Forecasts 10 minutes ahead are 0.2 % worse
    than repeating the last close; 1 minute ahead: as accurate as it'."""
    if matured.empty:
        return f"No forecast has matured yet: the first are scored {horizon.ahead()} after they are made."
    per_step = matured_metrics(matured).set_index("step")["mae_ratio"].dropna()
    if per_step.empty:
        return "The price has not moved since the forecasts were made: nothing to score yet."
    longest, shortest = int(per_step.index.max()), int(per_step.index.min())
    sentence = f"Forecasts {horizon.ahead(longest)} ahead are {_against_naive(per_step[longest])} repeating the last close"
    if shortest != longest:
        sentence += f"; {horizon.ahead(shortest)} ahead: {_against_naive(per_step[shortest])} it"
    return f"{sentence} ({len(matured)} matured forecast steps, last {ERROR_WINDOW_HOURS} hours)."


def render_text(view) -> dict:
    """Everything but the charts: KPIs, badges, banner, status line."""
    status, horizon, numbers = view.status, view.horizon, kpis(view.candles, view.forecast, view.matured, view.forming)
    offline = status.source == "offline demo"
    change = "" if numbers["change_pct"] is None else f"{numbers['change_pct']:+.3f} % vs last price"
    problems = "; ".join(filter(None, [status.error, status.note if not offline else None]))
    naive = status.model_version == NaiveBandForecaster.version
    has_candles = not view.candles.empty
    return {
        "price-title": f"{status.symbol} {status.timeframe}: last {SHOWN_CANDLES} candles and the next {horizon.steps} forecast",
        "kpi-last-price": _price(numbers["last_price"]),
        "kpi-last-price-detail": (f"the {_utc(int(view.forming['ts'].iloc[0]))} candle, still forming" if view.forming is not None
                                  else f"close of the {_utc(status.newest_ts)} candle"),
        "kpi-forecast-title": f"Forecast in {horizon.ahead()}",
        "kpi-forecast": _price(numbers["forecast"]),
        "kpi-forecast-detail": change,
        "kpi-mae-ratio": "–" if numbers["mae_ratio"] is None else f"{numbers['mae_ratio']:.3f}",
        "kpi-mae-ratio-detail": ("no model here: the forecast is the last close" if naive
                                 else "LSTM error ÷ naive error (below 1 beats it)"),
        "kpi-coverage": "–" if numbers["coverage"] is None else f"{100 * numbers['coverage']:.0f} %",
        "kpi-coverage-detail": coverage_detail(numbers["coverage"], view.matured, horizon),
        "verdict": verdict(view.matured, horizon),
        "source-badge": source_badge(status, has_candles),
        "model-badge": ("" if not has_candles  # nothing to forecast yet: no model verdict to give
                        else f"last close: no model has shown skill on {status.timeframe} candles" if naive
                        else guard_text(status.skill) if status.guarded
                        else f"model {status.model_version}" if status.model_version else "model unavailable"),
        "newest-candle": f"newest candle {_utc(status.newest_ts)}" + (f" · {status.feed}" if status.feed else ""),
        "banner": (f"Offline demo: synthetic prices, not a real market. {status.note or ''}" if offline else ""),
        "banner-hidden": not offline,
        "status-message": (f"⚠ {problems}. Showing the last good data." if problems and has_candles
                           else "" if has_candles else waiting_text(status, problems)),
        "updated-at": status.finished_at_ms,
    }


def source_badge(status: TickStatus, has_candles: bool) -> str:
    """The source, once it has answered; before that, nothing (a badge is a claim)."""
    if status.error is None and status.newest_ts is not None:
        return status.source
    return f"{status.source}: not answering" if has_candles and status.error else ""


def waiting_text(status: TickStatus, problems: str) -> str:
    """What the market page says before its first candles are stored, and why, if it knows."""
    return f"Waiting for the first candles from {status.source}" + (f": {problems}." if problems else "…")


def coverage_detail(coverage: float | None, matured: pd.DataFrame, horizon: Horizon) -> str:
    origins = int(matured["origin_ts"].nunique()) if not matured.empty else 0
    if undercovered(coverage, origins, horizon.level):
        return f"⚠ too narrow: {100 * coverage:.0f} % of closes inside the {horizon.band} band, over {origins:,} origins"
    return f"of closes inside the {horizon.band} band"
