"""Callbacks: read the store (after the deduplicated tick) and hand DataFrames to the pure
builders; `render_view` turns what was read into every output of the page."""

from __future__ import annotations

import dataclasses
import hashlib

import dash
import flask
import pandas as pd
from dash import ALL, ClientsideFunction, Input, Output, State
from dash.exceptions import PreventUpdate

from chronoprice.config import Settings
from chronoprice.evaluation.metrics import ERROR_WINDOW_HOURS
from chronoprice.market.markets import market_key, parse_market, parse_symbol
from chronoprice.market.timeframes import TIMEFRAME_MS, timeframe_ms
from chronoprice.model.features import HORIZON
from chronoprice.service.guard import served_forecast
from chronoprice.service.metrics import record_cache_lookup
from chronoprice.service.overview import summarise_watchlist
from chronoprice.service.scoring import read_scored
from chronoprice.service.status import (
    TickStatus,
    forming_frame,
    fresh_forming_row,
    status_to_json,
)
from chronoprice.service.tick import Ticker
from chronoprice.service.watchlist import watch_market
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.store.records import read_candles
from chronoprice.store.watchlist import (
    WatchlistFull,
    read_watchlist,
    remove_from_watchlist,
)
from chronoprice.web.access import write_refusal
from chronoprice.web.cache import cached_seconds
from chronoprice.web.dashboard.chart_view import shown_ranges, view_after, with_user_ranges
from chronoprice.web.dashboard.figures import (
    SHOWN_CANDLES,
    Horizon,
    error_figure,
    price_figure,
    step_error_figure,
)
from chronoprice.web.dashboard.layout import DEFAULT_SYMBOLS, symbol_options
from chronoprice.web.dashboard.market_text import render_text
from chronoprice.web.dashboard.overview import (
    DEFAULT_SORT,
    overview_row,
    sort_after_click,
    table_body,
)
from chronoprice.web.dashboard.urls import market_search, page_view

INDICATOR_WARM_UP = 60  # extra candles read so EMA 50 is settled on the first shown candle


@dataclasses.dataclass(frozen=True)
class ViewData:
    status: TickStatus
    candles: pd.DataFrame
    forecast: pd.DataFrame
    matured: pd.DataFrame
    horizon: Horizon
    forming: pd.DataFrame | None = None


def served_horizon(ticker: Ticker, timeframe: str) -> Horizon:
    """The forecaster's horizon on `timeframe` (the training default if no model could be
    loaded, so the page can still say what it waits for)."""
    forecaster = ticker.forecaster(timeframe)
    return Horizon(forecaster.horizon if forecaster else HORIZON, timeframe)


def read_view(ticker: Ticker, status: TickStatus) -> ViewData:
    """What the page shows of the market after the tick that ended in `status`."""
    timeframe = status.timeframe
    market = ticker.market(status.symbol, status.exchange, timeframe)
    db = ticker.db()
    candles = read_candles(db, market, limit=SHOWN_CANDLES + INDICATOR_WARM_UP)
    forecast = served_forecast(db, market, status)
    if not candles.empty and not forecast.empty and forecast["origin_ts"].iloc[0] != candles["ts"].iloc[-1]:
        forecast = forecast.iloc[:0]  # a forecast from an older candle would overlap real ones
    newest = int(candles["ts"].iloc[-1]) if not candles.empty else 0
    matured = read_scored(db, market, since_target_ts=newest - ERROR_WINDOW_HOURS * 3_600_000)
    return ViewData(status, candles, forecast, matured, served_horizon(ticker, timeframe),
                    fresh_forming(status, candles, ticker.now_ms()))


def fresh_forming(status: TickStatus, candles: pd.DataFrame, now_ms: int) -> pd.DataFrame | None:
    """The forming candle the last tick fetched (status.fresh_forming_row), if it is the one right
    after the newest closed candle shown."""
    forming = fresh_forming_row(status, now_ms)
    if forming is None or candles.empty or forming[0] != candles["ts"].iloc[-1] + timeframe_ms(status.timeframe):
        return None
    return forming_frame(forming)


def render_figures(view: ViewData, theme: str, overlays) -> dict:
    """The three charts, keyed by component id; they change only with a new candle."""
    symbol, horizon = market_key(view.status.symbol, view.status.timeframe), view.horizon
    return {
        "price-chart": price_figure(view.candles, view.forecast, theme, overlays, uirevision=symbol, level=horizon.level,
                                    forming=view.forming),
        "error-chart": error_figure(view.matured, theme, horizon, uirevision=symbol),
        "step-chart": step_error_figure(view.matured, theme, horizon, uirevision=symbol),
    }


def render_view(view: ViewData, theme: str, overlays) -> dict:
    """Every output of the refresh callback, keyed by component id, from data already read."""
    return {**render_figures(view, theme, overlays), **render_text(view)}


def view_key(status: TickStatus, now_ms: int, theme: str, overlays) -> str:
    """What a page's outputs depend on: the market's last tick (its status is new with every
    tick), whether the forming candle it fetched is still fresh, the theme and the overlays."""
    fresh = now_ms - status.finished_at_ms < timeframe_ms(status.timeframe)
    tick = hashlib.sha256(status_to_json(status).encode()).hexdigest()[:32]
    return f"view:{tick}:{fresh}:{theme}:{sorted(overlays)}"


def cached_outputs(cache, ticker: Ticker, status: TickStatus, theme: str, overlays, seconds: int) -> dict:
    """Every output of the page after the tick that ended in `status`: read and built (about
    0.2 s, mostly the charts) once per tick, kept `seconds`, for all the viewers the cache serves, not
    once per viewer and refresh."""
    key = view_key(status, ticker.now_ms(), theme, overlays)
    outputs = cache.get(key)
    record_cache_lookup(outputs is not None)
    if outputs is None:
        view = read_view(ticker, status)
        figures = {name: figure.to_dict() for name, figure in render_figures(view, theme, overlays).items()}
        outputs = {**figures, **render_text(view)}
        cache.set(key, outputs, timeout=seconds)
    return outputs


REFRESH_OUTPUTS = [
    ("price-chart", "figure"), ("error-chart", "figure"), ("step-chart", "figure"), ("price-title", "children"),
    ("kpi-last-price", "children"), ("kpi-last-price-detail", "children"), ("kpi-forecast-title", "children"), ("kpi-forecast", "children"),
    ("kpi-forecast-detail", "children"), ("kpi-mae-ratio", "children"), ("kpi-mae-ratio-detail", "children"),
    ("kpi-coverage", "children"), ("kpi-coverage-detail", "children"), ("verdict", "children"),
    ("source-badge", "children"), ("model-badge", "children"), ("newest-candle", "children"),
    ("banner", "children"), ("banner", "hidden"), ("status-message", "children"), ("updated-at", "data"),
]


def check_symbol(ticker: Ticker, text: str | None, current: str) -> tuple[str, str]:
    """(symbol to show, inline message) for what the user typed; a bad symbol keeps `current`."""
    try:
        symbol = parse_symbol((text or "").strip())
    except ValueError:
        return current, f"“{text}” is not a symbol; use BASE/QUOTE, for example ETH/USDT."
    status = ticker.tick(symbol)
    if status.symbol_unknown:
        return current, f"{status.error}. Still showing {current}."
    return symbol, ""


def watch_message(ticker: Ticker, symbol: str | None, timeframe: str, limit: int) -> str:
    """Watch the market the form names; the sentence that says what happened."""
    try:
        symbol, timeframe = parse_market(f"{symbol or ''}@{timeframe}")
        added = watch_market(ticker, symbol, timeframe, limit)
    except (ValueError, WatchlistFull) as error:
        return str(error).replace("@", " ") + "."
    if not added:
        return f"{symbol} {timeframe} is watched already."
    return f"Watching {symbol} {timeframe}: its history is being fetched, and it is forecast on every close."


def attach_callbacks(app: dash.Dash, ticker: Ticker, cache, settings: Settings) -> None:
    @app.callback([Output(component, prop) for component, prop in REFRESH_OUTPUTS],
                  Input("refresh", "n_intervals"), Input("active-symbol", "data"), Input("timeframe", "value"),
                  Input("theme", "data"), Input("overlays", "value"), Input("viewport-width", "data"), State("chart-view", "data"))
    def refresh(_, symbol, timeframe, theme, overlays, viewport_width, chart_view):
        try:
            status = ticker.tick(symbol, timeframe if timeframe in TIMEFRAME_MS else ticker.timeframe)
            outputs = cached_outputs(cache, ticker, status, theme or "dark", overlays or [], cached_seconds(settings.refresh_seconds))
        except STORE_UNAVAILABLE:
            raise PreventUpdate from None  # a lock past the busy timeout: keep the last good page
        ranges = shown_ranges(chart_view, market_key(status.symbol, status.timeframe), outputs["price-chart"], viewport_width)
        outputs = {**outputs, "price-chart": with_user_ranges(outputs["price-chart"], ranges)}
        return [outputs[component + ("-hidden" if prop == "hidden" else "")] for component, prop in REFRESH_OUTPUTS]

    @app.callback(Output("chart-view", "data"), Input("price-chart", "relayoutData"), State("chart-view", "data"),
                  State("active-symbol", "data"), State("timeframe", "value"), prevent_initial_call=True)
    def keep_chart_view(relayout, chart_view, symbol, timeframe):
        return view_after(chart_view, market_key(symbol, timeframe), relayout)

    @app.callback(Output("active-symbol", "data"), Output("symbol-message", "children"), Output("symbol-input", "value"),
                  Output("timeframe", "value"), Output("overlays", "value"), Output("url", "search"),
                  Output("overview-page", "hidden"), Output("market-page", "hidden"),
                  Output("market-controls", "hidden"), Output("models-page", "hidden"),
                  Input("url", "pathname"), Input("url", "search"), Input("symbol-input", "value"),
                  Input("timeframe", "value"), Input("overlays", "value"), State("active-symbol", "data"))
    def route(pathname, search, text, timeframe, overlays, current):
        """One callback for the URL and the controls that write it (Dash allows a callback's own
        outputs among its inputs): a control's change becomes a new history entry, and a URL,
        typed, linked or reached by back and forward, sets the controls."""
        keep = dash.no_update
        trigger = dash.ctx.triggered_id
        if trigger == "symbol-input":
            symbol, message = check_symbol(ticker, text, current)
            return symbol, message, keep, keep, keep, market_search(symbol, timeframe, overlays) if not message else keep, *[keep] * 4
        if trigger in ("timeframe", "overlays"):
            return keep, "", keep, keep, keep, market_search(current, timeframe, overlays), *[keep] * 4
        view = page_view(pathname, search, current, timeframe)
        symbol, problems = view.symbol, list(view.problems)
        if view.page == "market" and symbol != current:
            symbol, unknown = check_symbol(ticker, symbol, current)
            problems.append(unknown.rstrip("."))
        problems = [problem for problem in problems if problem] if view.page == "market" else []
        message = ". ".join(problems) + "." if problems else ""
        return (symbol, message, symbol, view.timeframe, list(view.overlays), keep,
                view.page != "overview", view.page != "market", view.page != "market", view.page != "models")

    @app.callback(Output("overview-body", "children"), Input("refresh", "n_intervals"), Input("overview-page", "hidden"),
                  Input("overview-sort", "data"), Input("watchlist-changed", "data"))
    def refresh_overview(_, hidden, sort, __):
        if hidden:
            raise PreventUpdate
        try:
            summaries = summarise_watchlist(ticker, read_watchlist(ticker.db()))
        except STORE_UNAVAILABLE:
            raise PreventUpdate from None
        return table_body([overview_row(summary, ticker.now_ms()) for summary in summaries], sort or DEFAULT_SORT)

    @app.callback(Output("watch-message", "children"), Output("watchlist-changed", "data"),
                  Input("watch-add", "n_clicks"), Input({"type": "unwatch", "market": ALL}, "n_clicks"),
                  State("watch-symbol", "value"), State("watch-timeframe", "value"), State("admin-token", "value"),
                  State("watchlist-changed", "data"), prevent_initial_call=True)
    def edit_watchlist(_, __, symbol, timeframe, token, changes):
        if not dash.ctx.triggered or not dash.ctx.triggered[0]["value"]:
            raise PreventUpdate  # new rows' buttons appearing, not a click
        refusal = write_refusal(flask.request.remote_addr, token, settings.admin_token)
        if refusal:
            return refusal[1] + ".", dash.no_update
        target = dash.ctx.triggered_id
        if isinstance(target, dict):
            removed = remove_from_watchlist(ticker.db(), *parse_market(target["market"].replace(" ", "@")))
            return (f"Stopped watching {target['market']}." if removed else f"{target['market']} was not watched."), changes + 1
        return watch_message(ticker, symbol, timeframe, settings.watch_limit), changes + 1

    @app.callback(Output("overview-sort", "data"), Input({"type": "overview-sort", "key": ALL}, "n_clicks"),
                  State("overview-sort", "data"), prevent_initial_call=True)
    def sort_overview(_, sort):
        return sort_after_click(sort or DEFAULT_SORT, dash.ctx.triggered_id["key"])

    @app.callback(Output("symbol-options", "children"), Input("symbols-once", "n_intervals"), prevent_initial_call=True)
    def list_symbols(_):
        return symbol_options(dict.fromkeys((*DEFAULT_SYMBOLS, *ticker.symbols())))

    @app.callback(Output("theme", "data"), Input("theme-toggle", "n_clicks"), State("theme", "data"), prevent_initial_call=True)
    def toggle_theme(_, theme):
        return "light" if theme != "light" else "dark"

    @app.callback(Output("root", "className"), Output("theme-toggle", "children"), Input("theme", "data"))
    def apply_theme(theme):
        return f"theme-{theme or 'dark'}", "Dark theme" if theme == "light" else "Light theme"

    app.clientside_callback(
        ClientsideFunction(namespace="chronoprice", function_name="followLive"),
        Output("price-chart", "figure", allow_duplicate=True), Output("kpi-last-price", "children", allow_duplicate=True),
        Output("kpi-last-price-detail", "children", allow_duplicate=True),
        Input("live-poll", "n_intervals"), Input("price-chart", "figure"),
        State("active-symbol", "data"), State("timeframe", "value"), State("market-page", "hidden"),
        prevent_initial_call=True,
    )

    app.clientside_callback("function() { return window.innerWidth; }", Output("viewport-width", "data"),
                            Input("url", "pathname"))
    app.clientside_callback(
        """function(_, updatedAt) {
            if (!updatedAt) { return "updating…"; }
            const seconds = Math.max(0, Math.round((Date.now() - updatedAt) / 1000));
            return "updated " + seconds + " s ago";
        }""",
        Output("updated-ago", "children"), Input("clock", "n_intervals"), State("updated-at", "data"),
    )

