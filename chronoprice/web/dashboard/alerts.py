"""The market page's alert rules (a form, the list with each band-exit rule's observed rate, and
delete buttons) and the header's bell; the bell's polling and browser notifications are
clientside (assets/alerts.js)."""

from __future__ import annotations

import dash
import flask
from dash import ALL, ClientsideFunction, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from chronoprice.config import Settings
from chronoprice.evaluation.metrics import INTERVAL_LEVELS
from chronoprice.service.alert_rules import FORMATS, KINDS, RuleError, describe, mask_webhook
from chronoprice.service.alerts import create_rule, observed_band_exits
from chronoprice.service.watchlist import NotListed
from chronoprice.store import STORE_UNAVAILABLE
from chronoprice.store.alerts import AlertRule, delete_rule, read_rules
from chronoprice.store.watchlist import WatchlistFull
from chronoprice.web.access import write_refusal
from chronoprice.web.cache import cached_seconds

ALERTS_POLL_MS = 5000  # how often the bell asks /api/v1/firings
KIND_LABELS = {"band_exit": "close leaves the forecast band", "price_cross": "close crosses a price",
               "forecast_move": "forecast moves by X %", "market_state": "market goes stale or failing"}


def bell() -> html.Div:
    return html.Div(className="bell-wrap", children=[
        dcc.Interval(id="alerts-poll", interval=ALERTS_POLL_MS, n_intervals=0),
        html.Button(["Alerts", html.Span(id="alerts-unread", className="bell-count")], id="alerts-bell", n_clicks=0,
                    className="bell", title="alerts"),
        html.Div(id="alerts-panel", className="alerts-panel", hidden=True, children=[
            html.Ul(id="alerts-list", className="alerts-list"),
            html.Button("Allow browser notifications", id="alerts-notify", n_clicks=0),
        ]),
    ])


def _field(label: str, component) -> html.Div:
    return html.Div(className="field", children=[html.Label(label, htmlFor=component.id), component])


def rules_section() -> html.Section:
    return html.Section(className="panel", children=[
        html.H2("Alerts on this market"),
        html.Div(className="alert-form", children=[
            _field("When", dcc.Dropdown(id="alert-type", options=[{"label": KIND_LABELS[kind], "value": kind} for kind in KINDS],
                                        value="band_exit", clearable=False, searchable=False)),
            _field("Price, or move in %", dcc.Input(id="alert-value", type="number", placeholder="e.g. 27000 or 0.5", min=0)),
            _field("Forecast step", dcc.Input(id="alert-step", type="number", min=1, step=1, value=1)),
            _field("Band", dcc.Dropdown(id="alert-level", options=[{"label": f"{level * 100:.0f} % band", "value": level}
                                                                   for level in INTERVAL_LEVELS],
                                        value=0.9, clearable=False, searchable=False)),
            _field("Webhook URL (optional)", dcc.Input(id="alert-webhook", type="url", placeholder="https://…", autoComplete="off")),
            _field("Webhook format", dcc.Dropdown(id="alert-format", options=list(FORMATS), value="generic", clearable=False,
                                                  searchable=False)),
            _field("Admin token", dcc.Input(id="alert-token", type="password", placeholder="if the server has one", autoComplete="off")),
            html.Button("Add alert", id="alert-add", n_clicks=0),
        ]),
        html.Div(className="message-row", children=[
            html.Div(id="alert-message", className="inline-message", role="status"),
            html.Button("Dismiss", id="alert-dismiss", n_clicks=0, className="link-button", hidden=True),
        ]),
        html.Ul(id="alert-rules", className="alert-rules"),
    ])


def form_body(kind: str, value, step, level, webhook: str | None, format_: str) -> dict:
    """The API's rule body from the form's fields."""
    body = {"type": kind, "webhook": webhook or None, "format": format_}
    if kind == "price_cross":
        body["level"] = value
    elif kind == "band_exit":
        body.update(step=step, level=level)
    elif kind == "forecast_move":
        body.update(step=step, percent=value)
    return body


def rule_item(rule: AlertRule, observed: dict | None) -> html.Li:
    parts = [describe(rule), f"webhook {mask_webhook(rule.webhook) or 'none'} ({rule.format})"]
    if observed is not None:
        rate = "no matured forecast yet" if observed["rate"] is None else (
            f"left {observed['rate'] * 100:.1f} % of the time in the last {observed['hours']} h "
            f"(95 % CI {observed['ci_low'] * 100:.1f}–{observed['ci_high'] * 100:.1f} %, {observed['count']} forecasts)")
        parts.append(f"{rate}; nominal {observed['nominal'] * 100:.0f} %")
    return html.Li([html.Span(" · ".join(parts)),
                    html.Button("Delete", id={"type": "alert-delete", "rule": rule.id}, n_clicks=0, className="link-button")])


def observed_rates(cache, ticker, rules: list[AlertRule], seconds: int) -> dict[str, dict | None]:
    """Each rule's observed band-exit rate (service.alerts.observed_band_exits), worked out once
    per market and tick for every viewer, as the rest of the page is."""
    if not rules:
        return {}
    newest = ticker.stored_status(rules[0].symbol, rules[0].timeframe).newest_ts
    key = f"alert-rates:{rules[0].symbol}:{rules[0].timeframe}:{newest}:{[rule.id for rule in rules]}"
    rates = cache.get(key)
    if rates is None:
        rates = {rule.id: observed_band_exits(ticker, rule) for rule in rules}
        cache.set(key, rates, timeout=seconds)
    return rates


def attach_alert_callbacks(app: dash.Dash, ticker, cache, settings: Settings) -> None:
    @app.callback(Output("alert-rules", "children"), Output("alert-message", "children"), Output("alert-message", "className"),
                  Output("alert-dismiss", "hidden"),
                  Input("alert-add", "n_clicks"), Input({"type": "alert-delete", "rule": ALL}, "n_clicks"),
                  Input("refresh", "n_intervals"), Input("active-symbol", "data"), Input("timeframe", "value"),
                  Input("alert-dismiss", "n_clicks"),
                  State("alert-type", "value"), State("alert-value", "value"), State("alert-step", "value"),
                  State("alert-level", "value"), State("alert-webhook", "value"), State("alert-format", "value"),
                  State("alert-token", "value"), State("market-page", "hidden"))
    def alert_rules(_, __, ___, symbol, timeframe, ____, kind, value, step, level, webhook, format_, token, hidden):
        """The rules of the market; a message (success or error) stays until dismissed or replaced,
        not cleared by the next refresh."""
        if hidden:
            raise PreventUpdate
        keep = dash.no_update
        message, style, dismiss_hidden = keep, keep, keep
        target = dash.ctx.triggered_id
        clicked = dash.ctx.triggered and dash.ctx.triggered[0]["value"]
        if target == "alert-dismiss":
            message, style, dismiss_hidden = "", "inline-message", True
        elif target == "alert-add" or (isinstance(target, dict) and clicked):
            refusal = write_refusal(flask.request.remote_addr, token, settings.admin_token)
            succeeded, message = (False, refusal[1] + ".") if refusal else _write(
                ticker, settings, target, symbol, timeframe, form_body(kind, value, step, level, webhook, format_))
            style, dismiss_hidden = f"inline-message {'success' if succeeded else 'error'}", False
        try:
            rules = read_rules(ticker.db(), symbol, timeframe)
            rates = observed_rates(cache, ticker, rules, cached_seconds(settings.refresh_seconds))
            return [rule_item(rule, rates[rule.id]) for rule in rules], message, style, dismiss_hidden
        except STORE_UNAVAILABLE:
            raise PreventUpdate from None

    app.clientside_callback(
        ClientsideFunction(namespace="chronoprice", function_name="pollAlerts"),
        Output("alerts-unread", "children"), Output("alerts-list", "children"),
        Input("alerts-poll", "n_intervals"), Input("alerts-bell", "n_clicks"), State("alerts-panel", "hidden"),
    )
    app.clientside_callback(
        "function(clicks, hidden) { return clicks ? !hidden : true; }",
        Output("alerts-panel", "hidden"), Input("alerts-bell", "n_clicks"), State("alerts-panel", "hidden"),
    )
    app.clientside_callback(
        """function(clicks) {
            if (clicks && window.Notification) { Notification.requestPermission(); }
            return window.dash_clientside.no_update;
        }""",
        Output("alerts-notify", "title"), Input("alerts-notify", "n_clicks"), prevent_initial_call=True,
    )


def _write(ticker, settings: Settings, target, symbol: str, timeframe: str, body: dict) -> tuple[bool, str]:
    """(whether it succeeded, what to say) for an add or a delete."""
    if isinstance(target, dict):
        deleted = delete_rule(ticker.db(), target["rule"])
        return deleted, "Alert deleted." if deleted else "That alert was deleted already."
    try:
        rule = create_rule(ticker, body, symbol, timeframe, settings.watch_limit, settings.allow_private_webhooks)
    except (RuleError, NotListed, WatchlistFull) as error:
        return False, f"{error}."
    return True, f"Alert added: {describe(rule)}."
