"""The evaluate command's HTML report, a document a person reads: a verdict sentence, the per-step
table with confidence intervals, charts on a time axis, and the backtest when it ran, in the
dashboard's look, readable on a phone. plotly.js sits beside the report (written once per
folder), so the report itself stays small and still opens offline."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go

from chronoprice.evaluation.backtest import capital
from chronoprice.evaluation.metrics import DEFAULT_LEVEL, INTERVAL_LEVELS

SHOWN_ORIGINS = 300
RESIDUAL_BINS = 80
Z_95 = 1.959964
COLORS = {"model": "#c47d00", "naive": "#5b6577", "drift": "#7aa2f7", "actual": "#1d2430"}
STYLE = """
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: #f3f5f9; color: #1d2430; }
main { max-width: 1100px; margin: 0 auto; padding: 16px; }
h1 { font-size: 22px; margin: 8px 0; } h2 { font-size: 16px; margin: 18px 0 6px; }
.verdict { font-size: 16px; line-height: 1.45; background: #fff; border: 1px solid #dfe4ec; border-radius: 10px; padding: 12px 14px; }
.panel { background: #fff; border: 1px solid #dfe4ec; border-radius: 10px; padding: 8px 10px; margin: 10px 0; overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; width: 100%; }
th, td { padding: 5px 8px; border-bottom: 1px solid #dfe4ec; text-align: right; white-space: nowrap; }
th { color: #5b6577; font-weight: 600; }
.note { color: #5b6577; font-size: 12px; }
"""


def origin_times(arrays: dict) -> pd.DatetimeIndex | np.ndarray:
    """Each scored origin's candle time (UTC, its open, as charts place candles), or its index when
    the run carries no times."""
    if "origin_ts" in arrays:
        return pd.to_datetime(arrays["origin_ts"], unit="ms", utc=True)
    return np.arange(len(arrays["actual"]))


def ratio_interval(table: pd.DataFrame) -> pd.DataFrame:
    """A 95 % interval of each step's MAE ratio, from the Diebold-Mariano test's own HAC standard
    error of the mean loss difference (DM statistic = mean difference / its standard error)."""
    difference = table["mae_model"] - table["mae_naive"]
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.where(table["dm_statistic"] != 0, np.abs(difference / table["dm_statistic"]), np.nan)
    return pd.DataFrame({"low": table["mae_ratio"] - Z_95 * error / table["mae_naive"],
                         "high": table["mae_ratio"] + Z_95 * error / table["mae_naive"]})


def _against(ratio: float, p_value: float) -> str:
    change = f"{abs(ratio - 1) * 100:.2f} % {'lower' if ratio < 1 else 'higher'}"
    return f"{change}, not significantly (DM p {p_value:.2f})" if p_value >= 0.05 else f"{change} (DM p {p_value:.3f})"


def verdict_sentence(table: pd.DataFrame, arrays: dict, level: float, timeframe: str | None = None) -> str:
    """The report's finding in one plain sentence, with its evidence."""
    first, last = table.iloc[0], table.iloc[-1]
    times = origin_times(arrays)
    span = (f" (from {times[0]:%Y-%m-%d %H:%M} to {times[-1]:%Y-%m-%d %H:%M} UTC)"
            if isinstance(times, pd.DatetimeIndex) and len(times) else "")
    candles = f" of {timeframe} candles" if timeframe else ""
    coverage = table[f"coverage_{level:.2f}"].mean()
    return (f"Over {len(arrays['actual']):,} origins{candles} the model never saw{span}, compared with repeating the "
            f"last close its error is {_against(first['mae_ratio'], first['dm_p_value'])} one step ahead and "
            f"{_against(last['mae_ratio'], last['dm_p_value'])} {int(last['step'])} steps ahead; its {level:.0%} band "
            f"covered {coverage:.1%} of the closes (mean over the steps).")


def step_table(table: pd.DataFrame, level: float) -> str:
    interval = ratio_interval(table)
    rows = pd.DataFrame({
        "step": table["step"].astype(int),
        "MAE ratio": table["mae_ratio"].map("{:.4f}".format),
        "95 % interval": [f"{low:.4f}–{high:.4f}" if np.isfinite(low) else "–" for low, high in zip(interval["low"], interval["high"])],
        "DM p": table["dm_p_value"].map("{:.3f}".format),
        "direction (95 % interval)": [f"{hit:.3f} ({low:.3f}–{high:.3f})" for hit, low, high in
                                      zip(table["direction_accuracy"], table["direction_ci_low"], table["direction_ci_high"])],
        f"{level:.0%} band coverage": table[f"coverage_{level:.2f}"].map("{:.3f}".format),
        "drift ratio": table["mae_ratio_drift"].map("{:.4f}".format),
        "moving average ratio": table["mae_ratio_moving_average"].map("{:.4f}".format),
    })
    return rows.to_html(index=False, border=0, escape=True)


def _styled(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(template="plotly_white", height=380, title={"text": title, "font": {"size": 14}},
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h", "y": -0.15},
                         font={"family": "system-ui, sans-serif", "size": 12})
    figure.update_yaxes(side="right")
    return figure


def report_figures(table: pd.DataFrame, arrays: dict) -> list[go.Figure]:
    """Predicted vs actual on the time axis, error by step against the baselines with intervals,
    interval coverage, and the residuals' histogram (binned here, so the file carries bins, not
    every origin)."""
    recent = slice(-SHOWN_ORIGINS, None)
    last_step = int(table["step"].max())
    times = origin_times(arrays)
    spacing = np.median(np.diff(times[-SHOWN_ORIGINS:])) if len(times) > 1 else 1  # one candle
    targets = times[recent] + last_step * spacing
    predicted = go.Figure()
    predicted.add_scatter(x=targets, y=arrays["actual"][recent, last_step - 1], name="close", line={"color": COLORS["actual"]})
    predicted.add_scatter(x=targets, y=arrays["mean"][recent, last_step - 1], name=f"forecast of it, made {last_step} candles before",
                          line={"color": COLORS["model"]})
    by_step = go.Figure()
    interval = ratio_interval(table)
    by_step.add_scatter(x=table["step"], y=table["mae_ratio"], name="model", mode="lines+markers", line={"color": COLORS["model"]},
                        error_y={"type": "data", "symmetric": False, "array": interval["high"] - table["mae_ratio"],
                                 "arrayminus": table["mae_ratio"] - interval["low"]})
    by_step.add_scatter(x=table["step"], y=table["mae_ratio_drift"], name="drift", mode="lines+markers",
                        line={"color": COLORS["drift"]})  # the moving average's ratio (2-5) is in the table: it would flatten this
    by_step.add_hline(y=1, line={"dash": "dot", "color": COLORS["naive"]}, annotation_text="last close")
    coverage = go.Figure()
    for level in INTERVAL_LEVELS:
        coverage.add_scatter(x=table["step"], y=table[f"coverage_{level:.2f}"], name=f"{level:.0%} band", mode="lines+markers")
        coverage.add_hline(y=level, line={"dash": "dot", "color": COLORS["naive"]})
    residuals = go.Figure()
    for step in (1, last_step):
        counts, edges = np.histogram(arrays["log_errors"][:, step - 1], bins=RESIDUAL_BINS)
        residuals.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, name=f"step {step}", opacity=0.6)
    residuals.update_layout(barmode="overlay")
    return [_styled(predicted, f"Close and its forecast {last_step} candles ahead, last {SHOWN_ORIGINS} origins (UTC)"),
            _styled(by_step, "MAE ratio to the last close by step, with 95 % intervals (below 1: better)"),
            _styled(coverage, "Band coverage by step (adaptive split-conformal)"),
            _styled(residuals, "Residuals, log(actual / forecast)")]


def capital_figure(trading: dict) -> go.Figure:
    """Each strategy's capital after costs, from 1, candle by candle."""
    figure = go.Figure()
    for name, returns in trading["curves"].items():
        figure.add_scatter(y=capital(returns), name=name.replace("_", " "), mode="lines")
    figure.update_xaxes(title_text="candle")
    return _styled(figure, f"Backtest after costs: capital from 1 (signal: the forecast move at step {trading['step']})")


def strategies_table(trading: dict) -> str:
    columns = ("gross_return", "net_return", "net_return_95", "sharpe", "sharpe_95", "max_drawdown", "hit_rate", "time_in_market", "trades", "turnover")
    rows = pd.DataFrame([{"strategy": name, **{column: row[column] for column in columns}} for name, row in trading["strategies"].items()])
    for column in ("net_return_95", "sharpe_95"):
        rows[column] = rows[column].map(lambda pair: f"{pair[0]:.4f} to {pair[1]:.4f}")
    return rows.round(4).to_html(index=False, border=0)


def write_report(path: Path, table: pd.DataFrame, arrays: dict, title: str, level: float = DEFAULT_LEVEL,
                 trading: dict | None = None, timeframe: str | None = None) -> None:
    """The report at `path`, and plotly.min.js beside it unless it is there already."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = report_figures(table, arrays) + ([capital_figure(trading)] if trading else [])
    charts = "".join(f"<div class='panel'>{figure.to_html(full_html=False, include_plotlyjs=False)}</div>" for figure in figures)
    backtest = f"<h2>Backtest after costs</h2><div class='panel'>{strategies_table(trading)}</div>" if trading else ""
    bundle = path.parent / "plotly.min.js"
    if not bundle.exists():
        bundle.write_bytes((Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes())
    path.write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script src='plotly.min.js'></script></head><body><main>"
        f"<h1>{html.escape(title)}</h1><p class='verdict'>{html.escape(verdict_sentence(table, arrays, level, timeframe))}</p>"
        f"<h2>By step</h2><div class='panel'>{step_table(table, level)}</div>"
        "<p class='note'>MAE ratio: the model's mean absolute error over the last close's; its interval from the "
        "Diebold-Mariano test's HAC standard error. Direction: the share of moves whose sign the forecast called, "
        "with its Wilson interval.</p>"
        f"{backtest}{charts}</main></body></html>"
    )
