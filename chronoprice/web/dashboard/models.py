"""The models page (/models): every registered model with its status and its live record on the
watched markets of its timeframe, beside its holdout score from training, and the registry's
recent changes. The builders are pure; the one callback reads through service/model_record.py,
worked out once per refresh interval for every viewer, as the API is."""

from __future__ import annotations

import dash
from dash import Input, Output, dcc, html
from dash.exceptions import PreventUpdate

from chronoprice.config import Settings
from chronoprice.evaluation.metrics import undercovered
from chronoprice.market.timeframes import utc_minute
from chronoprice.service.model_record import change_entry, model_entries, registered
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.store.registry import read_changes
from chronoprice.web.cache import cached_seconds
from chronoprice.web.dashboard.overview import market_path

HEADINGS = ["Model", "Timeframe", "Status", "Since", "Trained on", "Holdout MAE vs last close", "Market",
            "Live MAE vs last close", "DM p, mean of steps", "Band coverage %", "Matured origins",
            "Traded after 0.1 % fees: long/flat, long/short, buy-and-hold (net %)"]
STATUS_NOTES = {"champion": "serves the forecasts", "shadow": "forecasts beside the champion, scored, not shown",
                "retired": "no longer forecasts"}


def _number(value, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _model_cells(model: dict, span: int) -> list[html.Td]:
    status = model["status"] + ("" if model["load_error"] is None else f" (cannot load: {model['load_error']})")
    return [html.Td(html.Span(model["version"], title=model["artifact"]), rowSpan=span, className="text"),
            html.Td(model["timeframe"], rowSpan=span, className="text"),
            html.Td(html.Span(status, className=f"model-status model-{model['status']}", title=STATUS_NOTES[model["status"]]),
                    rowSpan=span, className="text"),
            html.Td(utc_minute(model["status_since_ms"]), rowSpan=span, className="text"),
            html.Td(model.get("data") or "–", rowSpan=span, className="text wrap"),
            html.Td(_number(model.get("holdout_mae_ratio"), 4), rowSpan=span, className="number")]


def _live_cells(record: dict | None) -> list[html.Td]:
    if record is None:
        return [html.Td("no watched market of this timeframe", colSpan=6, className="text")]
    coverage = None if record["coverage"] is None else 100 * record["coverage"]
    return [html.Td(dcc.Link(f"{record['symbol']}", href=market_path(record["symbol"], record["timeframe"])), className="text"),
            html.Td(_number(record["mae_ratio"], 4), className="number"), html.Td(_number(record["dm_p_value"], 3), className="number"),
            html.Td(("⚠ " if undercovered(record["coverage"], record["matured_origins"]) else "") + _number(coverage, 1),
                    className="number"), html.Td(f"{record['matured_origins']:,}", className="number"),
            html.Td(backtest_text(record["backtest"]), className="number")]


def backtest_text(result: dict | None) -> str:
    if result is None:
        return "–"
    strategies = result["strategies"]
    return " / ".join(f"{strategies[name]['net_return'] * 100:+.2f}" for name in ("long_flat", "long_short", "buy_and_hold"))


def model_rows(models: list[dict]) -> list[html.Tr]:
    """A row per model and watched market of its timeframe (the model's own cells span them)."""
    if not models:
        return [html.Tr(html.Td("No model is registered yet: the configured one registers itself on its first forecast; "
                                "`python -m chronoprice train --db ...` adds a shadow.", colSpan=len(HEADINGS)))]
    rows = []
    for model in models:
        records = model["live"] or [None]
        rows.append(html.Tr(_model_cells(model, len(records)) + _live_cells(records[0]), className=f"model-row model-{model['status']}"))
        rows.extend(html.Tr(_live_cells(record), className=f"model-row model-{model['status']}") for record in records[1:])
    return rows


def change_items(changes: list[dict]) -> list[html.Li]:
    if not changes:
        return [html.Li("No change yet.")]
    return [html.Li(f"{utc_minute(change['changed_ms'])}: {change['version']} ({change['timeframe']}) "
                    f"{change['previous'] or 'registered'} → {change['status']}: {change['reason']}") for change in changes]


def models_section() -> html.Section:
    return html.Section(className="panel", children=[
        html.H2("Models"),
        html.P("Each timeframe has one champion, whose forecasts you see; shadows forecast every candle beside it and are "
               "scored against the same last close. A shadow replaces the champion only after winning on a fresh window "
               "of matured forecasts at p < 0.05 (docs/MODEL.md); `python -m chronoprice models rollback` undoes it. "
               "Live figures cover the last 24 hours; MAE below 1 beats repeating the last close.", className="verdict"),
        html.Div(className="table-scroll", children=html.Table(id="models-table", className="overview models", children=[
            html.Thead(html.Tr([html.Th(heading, className="wrap") for heading in HEADINGS])), html.Tbody(id="models-body")])),
        html.H2("Changes"),
        html.Ul(id="models-changes", className="model-changes"),
    ])


def attach_models_callbacks(app: dash.Dash, ticker, cache, settings: Settings) -> None:
    @app.callback(Output("models-body", "children"), Output("models-changes", "children"),
                  Input("refresh", "n_intervals"), Input("models-page", "hidden"))
    def refresh_models(_, hidden):
        if hidden:
            raise PreventUpdate
        payload = cache.get("page:models")
        try:
            if payload is None:
                payload = {"models": model_entries(ticker, registered(ticker)),
                           "changes": [change_entry(change) for change in read_changes(ticker.db(), limit=20)]}
                cache.set("page:models", payload, timeout=cached_seconds(settings.refresh_seconds))
        except STORE_UNAVAILABLE:
            raise PreventUpdate from None
        return model_rows(payload["models"]), change_items(payload["changes"])
