"""Pure figure builders and the numbers beside them: DataFrames in, figures and dicts out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from chronoprice.evaluation.metrics import (
    DEFAULT_LEVEL,
    matured_metrics,
    overall_metrics,
)
from chronoprice.market.timeframes import span_text

SHOWN_CANDLES = 60
# Trace uids the page's live poll (assets/live.js) looks for: it fills in the forming candle after the newest closed one.
FORMING_UID, CANDLES_UID = "forming", "candles"
OVERLAYS = {"sma20": "SMA 20", "ema50": "EMA 50", "bollinger": "Bollinger 20/2", "rsi": "RSI 14"}
THEMES = {
    "dark": {"template": "plotly_dark", "paper": "#11161f", "plot": "#11161f", "grid": "#263040", "text": "#d7dde8",
             "up": "#26a69a", "down": "#ef5350", "forecast": "#f5b942", "band": "rgba(245, 185, 66, 0.16)", "volume": "rgba(130, 150, 180, 0.45)",
             "forming": "#9aa5b8"},
    "light": {"template": "plotly_white", "paper": "#ffffff", "plot": "#ffffff", "grid": "#e3e7ee", "text": "#1d2430",
              "up": "#0f8f7e", "down": "#d63c3a", "forecast": "#c47d00", "band": "rgba(196, 125, 0, 0.14)", "volume": "rgba(90, 110, 140, 0.35)",
              "forming": "#6b7588"},
}


def percent(level: float) -> str:
    """0.9 -> '90 %'."""
    return f"{level * 100:g} %"


@dataclasses.dataclass(frozen=True)
class Horizon:
    """What the served forecast spans, for the words on the page: its steps, the candle
    timeframe and the level of its band."""

    steps: int
    timeframe: str
    level: float = DEFAULT_LEVEL

    def ahead(self, steps: int | None = None) -> str:
        """'10 minutes' for the whole horizon of 1-minute candles, or for `steps` of them."""
        return span_text(self.steps if steps is None else steps, self.timeframe)

    @property
    def band(self) -> str:
        return percent(self.level)


def to_datetime(ts) -> pd.Series:
    return pd.to_datetime(pd.Series(ts), unit="ms", utc=True)


def with_indicators(candles: pd.DataFrame) -> pd.DataFrame:
    """Add sma20, ema50, bollinger_upper/lower (20, 2σ) and rsi14 (Wilder) columns."""
    close = candles["close"]
    sma20, std20 = close.rolling(20).mean(), close.rolling(20).std(ddof=0)
    change = close.diff()
    gain = change.clip(lower=0).ewm(alpha=1 / 14, adjust=False, min_periods=14).mean()
    loss = (-change.clip(upper=0)).ewm(alpha=1 / 14, adjust=False, min_periods=14).mean()
    return candles.assign(
        sma20=sma20,
        ema50=close.ewm(span=50, adjust=False, min_periods=50).mean(),
        bollinger_upper=sma20 + 2 * std20,
        bollinger_lower=sma20 - 2 * std20,
        rsi14=100 - 100 / (1 + gain / loss.replace(0, np.nan)),
    )


def predicted_candles(last_close: float, forecast: pd.DataFrame) -> pd.DataFrame:
    """Forecast steps as candles: each opens at the previous (predicted) close.

    Returns ts (target candle open time), open, high, low, close, lower, upper.
    """
    closes = forecast["predicted"].to_numpy(dtype="float64")
    opens = np.concatenate([[last_close], closes[:-1]])
    return pd.DataFrame(
        {
            "ts": forecast["target_ts"].to_numpy(),
            "open": opens,
            "high": np.maximum(opens, closes),
            "low": np.minimum(opens, closes),
            "close": closes,
            "lower": forecast["lower"].to_numpy(dtype="float64"),
            "upper": forecast["upper"].to_numpy(dtype="float64"),
        }
    )


def _style(figure: go.Figure, theme: str, uirevision: str) -> go.Figure:
    colors = THEMES[theme]
    figure.update_layout(
        template=colors["template"], paper_bgcolor=colors["paper"], plot_bgcolor=colors["plot"],
        font={"color": colors["text"], "size": 12}, margin={"l": 10, "r": 10, "t": 30, "b": 10},
        uirevision=uirevision, hovermode="x unified", showlegend=True,
        legend={"orientation": "h", "y": 1.06, "x": 0, "font": {"size": 11}},
        modebar={"orientation": "v"},  # down the right edge: a row across the top would cover the legend on a phone
    )
    figure.update_xaxes(gridcolor=colors["grid"], rangeslider_visible=False)
    figure.update_yaxes(gridcolor=colors["grid"], side="right", hoverformat=",.2f")  # prices as prices, never "25.01k"
    return figure


def empty_figure(message: str, theme: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font={"size": 15}, xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return _style(figure, theme, "empty")


def price_figure(candles: pd.DataFrame, forecast: pd.DataFrame, theme: str, overlays=(), uirevision: str = "price",
                 level: float = DEFAULT_LEVEL, forming: pd.DataFrame | None = None) -> go.Figure:
    """The last SHOWN_CANDLES candles, the forecast as hollow candles with its interval band,
    a divider at the forecast origin, volume bars, the chosen overlays, and the candle still
    forming (grey, named so in the legend and on hover).

    `candles` may hold more history than is shown; indicators use it so they start warmed up.
    `forecast` is one stored forecast (step, target_ts, predicted, lower, upper), or empty.
    """
    if candles.empty:
        return empty_figure("Waiting for the first candles…", theme)
    colors = THEMES[theme]
    overlays = set(overlays)
    rows = 3 if "rsi" in overlays else 2
    heights = [0.62, 0.18, 0.20] if rows == 3 else [0.78, 0.22]
    figure = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.03, row_heights=heights)
    shown = with_indicators(candles).tail(SHOWN_CANDLES)
    when = to_datetime(shown["ts"])
    figure.add_trace(
        go.Candlestick(
            x=when, open=shown["open"], high=shown["high"], low=shown["low"], close=shown["close"], name="candles", uid=CANDLES_UID,
            increasing={"line": {"color": colors["up"]}, "fillcolor": colors["up"]},
            decreasing={"line": {"color": colors["down"]}, "fillcolor": colors["down"]},
        ),
        row=1, col=1,
    )
    _add_overlays(figure, shown, when, overlays, colors)
    # Always there, empty when nothing is forming, so the live poll only fills it in.
    forming = forming if forming is not None else candles.iloc[:0]
    figure.add_trace(
        go.Candlestick(
            x=to_datetime(forming["ts"]), open=forming["open"], high=forming["high"], low=forming["low"],
            close=forming["close"], name="forming (not closed)", uid=FORMING_UID, opacity=0.55, showlegend=not forming.empty,
            increasing={"line": {"color": colors["forming"]}, "fillcolor": colors["forming"]},
            decreasing={"line": {"color": colors["forming"]}, "fillcolor": "rgba(0, 0, 0, 0)"},
        ),
        row=1, col=1,
    )
    if not forecast.empty:
        _add_forecast(figure, predicted_candles(float(shown["close"].iloc[-1]), forecast), int(shown["ts"].iloc[-1]), colors,
                      f"{percent(level)} interval")
    figure.add_trace(
        go.Bar(x=when, y=shown["volume"], name="volume", marker_color=colors["volume"], showlegend=False,
               hovertemplate="volume %{y:,.4f}<extra></extra>"),
        row=2, col=1,
    )
    figure.update_yaxes(title_text="volume", row=2, col=1, title_font={"size": 10})
    if rows == 3:
        figure.update_yaxes(range=[0, 100], title_text="RSI", row=3, col=1, title_font={"size": 10})
    return _style(figure, theme, uirevision)


def _add_overlays(figure: go.Figure, shown: pd.DataFrame, when: pd.Series, overlays: set, colors: dict) -> None:
    lines = {"sma20": ("SMA 20", "#7aa2f7"), "ema50": ("EMA 50", "#bb9af7")}
    for key, (name, color) in lines.items():
        if key in overlays:
            figure.add_trace(go.Scatter(x=when, y=shown[key], name=name, line={"color": color, "width": 1.4}), row=1, col=1)
    if "bollinger" in overlays:
        for key, name in (("bollinger_upper", "Bollinger upper"), ("bollinger_lower", "Bollinger lower")):
            figure.add_trace(go.Scatter(x=when, y=shown[key], name=name, line={"color": "#7dcfff", "width": 1, "dash": "dot"}), row=1, col=1)
    if "rsi" in overlays:
        figure.add_trace(go.Scatter(x=when, y=shown["rsi14"], name="RSI 14", line={"color": "#e0af68", "width": 1.3}), row=3, col=1)
        for level in (30, 70):
            figure.add_hline(y=level, line={"color": colors["grid"], "dash": "dot"}, row=3, col=1)


def _add_forecast(figure: go.Figure, predicted: pd.DataFrame, origin_ts: int, colors: dict, band_name: str) -> None:
    when = to_datetime(predicted["ts"])
    figure.add_trace(
        go.Scatter(x=when, y=predicted["upper"], mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False, name="upper"),
        row=1, col=1,
    )
    figure.add_trace(
        go.Scatter(x=when, y=predicted["lower"], mode="lines", line={"width": 0}, fill="tonexty", fillcolor=colors["band"],
                   hoverinfo="skip", name=band_name),
        row=1, col=1,
    )
    hover = [f"predicted close {close:,.2f}<br>{band_name} {lower:,.2f} – {upper:,.2f}"
             for close, lower, upper in zip(predicted["close"], predicted["lower"], predicted["upper"])]
    figure.add_trace(
        go.Candlestick(
            x=when, open=predicted["open"], high=predicted["high"], low=predicted["low"], close=predicted["close"],
            name="forecast", opacity=0.9, text=hover, hoverinfo="x+text",
            increasing={"line": {"color": colors["forecast"]}, "fillcolor": "rgba(0,0,0,0)"},
            decreasing={"line": {"color": colors["forecast"]}, "fillcolor": "rgba(0,0,0,0)"},
        ),
        row=1, col=1,
    )
    divider = pd.to_datetime(origin_ts + 30_000, unit="ms", utc=True)
    figure.add_vline(x=divider, line={"color": colors["forecast"], "dash": "dash", "width": 1})
    figure.add_annotation(x=divider, y=1, yref="paper", text="forecast →", showarrow=False, xanchor="left",
                          font={"color": colors["forecast"], "size": 11})
    last = predicted.iloc[-1]
    figure.add_annotation(x=when.iloc[-1], y=float(last["close"]), text=f"<b>{last['close']:,.2f}</b><br>{last['lower']:,.2f}–{last['upper']:,.2f}",
                          showarrow=False, xanchor="right", yanchor="bottom", align="right", yshift=6,
                          font={"color": colors["forecast"], "size": 11}, name="last forecast")


def error_figure(matured: pd.DataFrame, theme: str, horizon: Horizon, uirevision: str = "errors") -> go.Figure:
    """Percentage error of the first and last steps' forecasts by target time."""
    if matured.empty:
        return empty_figure(f"First forecasts mature in {horizon.ahead()}", theme)
    colors = THEMES[theme]
    figure = go.Figure()
    for step, color in ((1, "#7aa2f7"), (horizon.steps, colors["forecast"])):
        rows = matured[matured["step"] == step]
        error = 100 * (rows["predicted"] - rows["actual"]) / rows["actual"]
        figure.add_trace(go.Scatter(x=to_datetime(rows["target_ts"]), y=error, mode="lines", name=f"step {step} error (%)",
                                    line={"color": color, "width": 1.3}))
    figure.add_hline(y=0, line={"color": colors["grid"]})
    return _style(figure, theme, uirevision)


def step_error_figure(matured: pd.DataFrame, theme: str, horizon: Horizon, uirevision: str = "steps") -> go.Figure:
    """Mean absolute error by step, the LSTM beside the naive baseline."""
    if matured.empty:
        return empty_figure("Per-step accuracy appears once forecasts mature", theme)
    colors = THEMES[theme]
    per_step = matured_metrics(matured)
    figure = go.Figure()
    figure.add_trace(go.Bar(x=per_step["step"], y=per_step["mae_model"], name="LSTM", marker_color=colors["forecast"]))
    figure.add_trace(go.Bar(x=per_step["step"], y=per_step["mae_naive"], name="naive (last close)", marker_color=colors["volume"]))
    _style(figure, theme, uirevision)
    figure.update_layout(barmode="group", hovermode="x")
    figure.update_xaxes(title_text=f"steps ahead (one step: {horizon.ahead(1)})", dtick=1)
    return figure


def kpis(candles: pd.DataFrame, forecast: pd.DataFrame, matured: pd.DataFrame, forming: pd.DataFrame | None = None) -> dict:
    """Headline numbers: last price (the forming candle's, when there is one), the forecast's
    last step and its % change from it, MAE ratio, coverage.

    Values are None where there is nothing to compute them from yet.
    """
    newest = forming if forming is not None and not forming.empty else candles
    last = float(newest["close"].iloc[-1]) if not newest.empty else None
    ahead = float(forecast["predicted"].iloc[-1]) if not forecast.empty else None
    scores = overall_metrics(matured)
    return {
        "last_price": last,
        "forecast": ahead,
        "change_pct": 100 * (ahead / last - 1) if last and ahead else None,
        "mae_ratio": scores["mae_ratio"],
        "coverage": scores["coverage"],
        "matured": scores["count"],
    }
