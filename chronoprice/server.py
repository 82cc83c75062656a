"""The Dash app: settings and pipeline in, the dashboard served by Flask out."""

from __future__ import annotations

import os
from typing import Mapping

import dash
from flask_caching import Cache

from chronoprice.api import cache_config, register_api
from chronoprice.config import PROJECT_ROOT, Settings
from chronoprice.dashboard.callbacks import attach_callbacks
from chronoprice.dashboard.layout import build_layout
from chronoprice.pipeline import Pipeline, build_pipeline
from chronoprice.store import open_store


def create_app(settings: Settings, pipeline: Pipeline | None = None, env: Mapping[str, str] = os.environ) -> dash.Dash:
    """The dashboard and JSON API; building it does no network, database or model I/O."""
    app = dash.Dash(
        __name__,
        title="ChronoPrice",
        assets_folder=str(PROJECT_ROOT / "assets"),
        meta_tags=[{"name": "viewport", "content": "width=device-width, initial-scale=1"}],
    )
    app.layout = build_layout(settings)
    pipeline = pipeline or build_pipeline(settings)
    cache = Cache(app.server, config=cache_config(env))
    register_api(app.server, pipeline, settings.symbol, cache, settings.refresh_seconds)
    attach_callbacks(app, pipeline, cache)
    # Dash registers its script bundles on the first request, after marking the setup done, so a
    # concurrent request can find none and answer 500 (plotly/dash#3971): register them now.
    app._setup_server()
    return app


def serve(settings: Settings) -> None:
    """Serve until interrupted; a database that cannot be used stops it here, with its name."""
    open_store(settings.db).close()
    app = create_app(settings)
    print(f"ChronoPrice on http://{settings.host}:{settings.port}/ ({settings.source} source, {settings.symbol})", flush=True)
    app.run(host=settings.host, port=settings.port, debug=settings.debug)
