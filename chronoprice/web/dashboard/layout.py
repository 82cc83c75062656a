"""The page's structure. Ids here are the contract with callbacks.py and the browser test."""

from __future__ import annotations

from dash import dcc, html

from chronoprice.config import Settings
from chronoprice.evaluation.metrics import ERROR_WINDOW_HOURS
from chronoprice.market.timeframes import TIMEFRAME_MS
from chronoprice.web.dashboard.alerts import bell, rules_section
from chronoprice.web.dashboard.figures import OVERLAYS
from chronoprice.web.dashboard.models import models_section
from chronoprice.web.dashboard.overview import overview_section

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT")
LIVE_POLL_MS = 1000  # how often the market page asks /api/v1/live for the forming candle (assets/live.js)
KPI_CARDS = (
    ("kpi-last-price", "Last price"),
    ("kpi-forecast", "Forecast"),
    ("kpi-mae-ratio", "MAE vs last close"),
    ("kpi-coverage", "Interval coverage"),
)


def _kpi_card(card_id: str, title: str) -> html.Div:
    return html.Div(className="kpi", children=[html.Div(title, id=card_id + "-title", className="kpi-title"), html.Div("–", id=card_id, className="kpi-value"),
                                               html.Div(id=card_id + "-detail", className="kpi-detail")])


def symbol_options(symbols) -> list[html.Option]:
    return [html.Option(value=symbol) for symbol in symbols]


def build_layout(settings: Settings) -> html.Div:
    replay = settings.source == "replay"
    symbols = dict.fromkeys((settings.symbol, *DEFAULT_SYMBOLS))
    return html.Div(
        id="root",
        className="theme-dark",
        children=[
            dcc.Location(id="url", refresh=False),  # the controls write the URL: a history entry, no reload
            dcc.Store(id="theme", storage_type="local", data="dark"),
            dcc.Store(id="active-symbol", data=settings.symbol),
            dcc.Store(id="updated-at"),
            dcc.Store(id="chart-view"),  # the price chart's zoom and pan (chart_view.py)
            dcc.Store(id="viewport-width"),  # the browser's, set once: a phone opens the chart on the recent candles
            dcc.Interval(id="refresh", interval=int(settings.refresh_seconds * 1000), n_intervals=0),
            dcc.Interval(id="clock", interval=1000, n_intervals=0),
            dcc.Interval(id="live-poll", interval=LIVE_POLL_MS, n_intervals=0),
            dcc.Interval(id="symbols-once", interval=300, max_intervals=1),
            html.Header(
                className="header",
                children=[
                    html.Div(className="brand", children=[
                        html.H1(html.A("ChronoPrice", href="/", title="all watched markets")),
                        html.Span(id="source-badge", className="badge"),
                        html.A("Overview", href="/", className="nav-link"),
                        html.A("Models", href="/models", className="nav-link"),
                    ]),
                    html.Div(id="market-controls", className="market-controls", hidden=True, children=[
                        html.Div(
                            className="symbol-picker",
                            children=[
                                dcc.Input(id="symbol-input", type="text", value=settings.symbol, list="symbol-options", debounce=True,
                                          disabled=replay, spellCheck=False, autoComplete="off", placeholder="symbol, e.g. ETH/USDT"),
                                html.Datalist(id="symbol-options", children=symbol_options(symbols)),
                                html.Div(id="symbol-message", className="inline-message", role="alert"),
                            ],
                        ),
                        dcc.RadioItems(id="timeframe", options=list(TIMEFRAME_MS), value=settings.timeframe, inline=True,
                                       className="timeframes"),
                        html.Div(className="meta", children=[
                            html.Span(id="newest-candle"), html.Span(id="updated-ago"), html.Span(id="model-badge", className="badge badge-model"),
                        ]),
                    ]),
                    html.Div(className="header-tools", children=[
                        bell(),
                        html.Button("Light theme", id="theme-toggle", n_clicks=0, className="theme-toggle"),
                    ]),
                ],
            ),
            html.Div(id="banner", className="banner", hidden=True),
            html.Div(id="overview-page", children=[overview_section()]),
            html.Div(id="models-page", hidden=True, children=[models_section()]),
            html.Div(id="market-page", hidden=True, children=[
                html.Div(id="status-message", className="status-message"),
                html.Section(className="kpis", children=[_kpi_card(card_id, title) for card_id, title in KPI_CARDS]),
                html.Section(className="panel price-panel", children=[
                    html.Div(className="panel-head", children=[
                        html.H2(id="price-title", children="Price"),
                        dcc.Checklist(id="overlays", options=[{"label": label, "value": key} for key, label in OVERLAYS.items()],
                                      value=[], inline=True, className="overlays"),
                    ]),
                    # A double click always gives the whole chart back (Plotly's default first resets
                    # to the figure's own range: on a phone, the recent candles).
                    dcc.Graph(id="price-chart", className="price-chart",
                              config={"displaylogo": False, "responsive": True, "doubleClick": "autosize"}),
                ]),
                html.Section(className="panel", children=[
                    html.H2(f"Forecast errors, last {ERROR_WINDOW_HOURS} hours"),
                    html.P(id="verdict", className="verdict"),
                    html.Div(className="error-charts", children=[
                        dcc.Graph(id="error-chart", className="error-chart", config={"displaylogo": False, "responsive": True}),
                        dcc.Graph(id="step-chart", className="error-chart", config={"displaylogo": False, "responsive": True}),
                    ]),
                ]),
                rules_section(),
            ]),
            html.Footer("Forecasts are a teaching tool, not trading advice. The naive baseline repeats the last close; "
                        "a model that cannot beat it has learned nothing useful.", className="footer"),
        ],
    )
