"""The Dash app: settings and pipeline in, a Flask-served page out.

The full dashboard (charts, KPIs, themes) is built in chronoprice.dashboard; until then this
page shows the live status and the newest forecast so `python app.py` is useful on its own.
"""

from __future__ import annotations

import dash
import pandas as pd
from dash import Input, Output, dcc, html

from chronoprice.config import PROJECT_ROOT, Settings
from chronoprice.pipeline import Pipeline, build_pipeline
from chronoprice.store import read_latest_forecast


def forecast_table_rows(steps: pd.DataFrame) -> list[html.Tr]:
    """Table rows (step, UTC time, predicted close, interval) of one stored forecast."""
    rows = []
    for step in steps.to_dict("records"):
        when = pd.Timestamp(step["target_ts"], unit="ms", tz="UTC").strftime("%H:%M UTC")
        rows.append(html.Tr([html.Td(step["step"]), html.Td(when), html.Td(f"{step['predicted']:,.2f}"),
                             html.Td(f"{step['lower']:,.2f} – {step['upper']:,.2f}")]))
    return rows


def build_layout(settings: Settings) -> html.Div:
    return html.Div(
        [
            html.H1("ChronoPrice"),
            html.P(id="status", children="starting…"),
            html.Table([html.Thead(html.Tr([html.Th("step"), html.Th("time"), html.Th("predicted close"), html.Th("90 % interval")])),
                        html.Tbody(id="forecast-rows")]),
            dcc.Interval(id="refresh", interval=int(settings.refresh_seconds * 1000), n_intervals=0),
        ]
    )


def refreshed_view(pipeline: Pipeline, symbol: str) -> tuple[str, list[html.Tr]]:
    """Run the (deduplicated) tick and return the status line and the newest forecast's rows."""
    status = pipeline.tick(symbol)
    steps = read_latest_forecast(pipeline.db(), pipeline.market(symbol, status.exchange))
    return status.summary(), forecast_table_rows(steps)


def attach_callbacks(app: dash.Dash, pipeline: Pipeline, settings: Settings) -> None:
    @app.callback(Output("status", "children"), Output("forecast-rows", "children"), Input("refresh", "n_intervals"))
    def refresh(_):
        return refreshed_view(pipeline, settings.symbol)


def create_app(settings: Settings, pipeline: Pipeline | None = None) -> dash.Dash:
    app = dash.Dash(__name__, title="ChronoPrice", assets_folder=str(PROJECT_ROOT / "assets"))
    app.layout = build_layout(settings)
    attach_callbacks(app, pipeline or build_pipeline(settings), settings)
    return app


def serve(settings: Settings) -> None:
    app = create_app(settings)
    print(f"ChronoPrice on http://{settings.host}:{settings.port}/ ({settings.source} source, {settings.symbol})")
    app.run(host=settings.host, port=settings.port, debug=settings.debug)
