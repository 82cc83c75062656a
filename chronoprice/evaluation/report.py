"""The evaluate command's HTML report: four Plotly figures in one self-contained file, and the
backtest's strategies and capital curves when it ran."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from chronoprice.evaluation.backtest import capital
from chronoprice.evaluation.metrics import DEFAULT_LEVEL, INTERVAL_LEVELS

SHOWN_ORIGINS = 300


def report_figures(table: pd.DataFrame, arrays: dict) -> list[go.Figure]:
    """Predicted vs actual, error by step against the baselines, interval coverage, residuals."""
    recent = slice(-SHOWN_ORIGINS, None)
    shown_steps = (1, int(table["step"].max()))
    predicted = go.Figure(layout_title_text=f"Predicted vs actual close by target candle, last {SHOWN_ORIGINS} origins")
    origins = np.arange(len(arrays["actual"]))[recent]
    predicted.add_scatter(x=origins + 1, y=arrays["actual"][recent, 0], name="actual", line={"color": "#444"})
    for step in shown_steps:
        predicted.add_scatter(x=origins + step, y=arrays["mean"][recent, step - 1], name=f"predicted {step} candles ahead")
    predicted.update_xaxes(title_text="candle (origin index + steps ahead)")
    by_step = go.Figure(layout_title_text="Mean absolute error by step: model and baselines")
    for column, name in (("mae_model", "LSTM"), ("mae_naive", "naive (last close)"), ("mae_drift", "drift"),
                         ("mae_moving_average", "moving average")):
        by_step.add_bar(x=table["step"], y=table[column], name=name)
    coverage = go.Figure(layout_title_text="Interval coverage by step (adaptive split-conformal)")
    for level in INTERVAL_LEVELS:
        coverage.add_scatter(x=table["step"], y=table[f"coverage_{level:.2f}"], name=f"{level:.0%} interval", mode="lines+markers")
        coverage.add_hline(y=level, line={"dash": "dot"})
    residuals = go.Figure(layout_title_text="Residuals, log(actual / predicted)")
    for step in shown_steps:
        residuals.add_histogram(x=arrays["log_errors"][:, step - 1], name=f"step {step}", opacity=0.6, nbinsx=120)
    residuals.update_layout(barmode="overlay")
    for figure in (predicted, by_step, coverage, residuals):
        figure.update_layout(template="plotly_white", height=420)
    return [predicted, by_step, coverage, residuals]


def capital_figure(trading: dict) -> go.Figure:
    """Each strategy's capital after costs, from 1, candle by candle."""
    figure = go.Figure(layout_title_text=f"Backtest after costs: capital from 1 (signal: the forecast move at step {trading['step']})")
    for name, returns in trading["curves"].items():
        figure.add_scatter(y=capital(returns), name=name.replace("_", " "), mode="lines")
    figure.update_xaxes(title_text="candle")
    figure.update_layout(template="plotly_white", height=420)
    return figure


def strategies_table(trading: dict) -> str:
    columns = ("gross_return", "net_return", "net_return_95", "sharpe", "sharpe_95", "max_drawdown", "hit_rate", "time_in_market", "trades", "turnover")
    rows = pd.DataFrame([{"strategy": name, **{column: row[column] for column in columns}} for name, row in trading["strategies"].items()])
    for column in ("net_return_95", "sharpe_95"):
        rows[column] = rows[column].map(lambda pair: f"{pair[0]:.4f} to {pair[1]:.4f}")
    return rows.round(4).to_html(index=False)


def write_report(path: Path, table: pd.DataFrame, arrays: dict, title: str, level: float = DEFAULT_LEVEL,
                 trading: dict | None = None) -> None:
    """One HTML file with plotly.js embedded, so it opens offline."""
    figures = report_figures(table, arrays) + ([capital_figure(trading)] if trading else [])
    parts = [figure.to_html(full_html=False, include_plotlyjs=(number == 0)) for number, figure in enumerate(figures)]
    summary = table[["step", "mae_ratio", "direction_accuracy", "dm_p_value", f"coverage_{level:.2f}"]].round(4).to_html(index=False)
    backtest = f"<h2>Backtest after costs</h2>{strategies_table(trading)}" if trading else ""
    Path(path).write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"<h1>{title}</h1>{summary}{backtest}{''.join(parts)}</body></html>"
    )
