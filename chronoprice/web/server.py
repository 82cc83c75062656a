"""The Dash app: settings and ticker in, the dashboard and JSON API served by Flask out."""

from __future__ import annotations

import logging
import os
from typing import Mapping

import dash
from flask_caching import Cache
from werkzeug.serving import run_simple

from chronoprice.config import PROJECT_ROOT, Settings
from chronoprice.service.build import build_ticker, start_scheduler
from chronoprice.service.tick import Ticker
from chronoprice.store import open_store
from chronoprice.web.api import register_api
from chronoprice.web.cache import cache_config
from chronoprice.web.dashboard.alerts import attach_alert_callbacks
from chronoprice.web.dashboard.callbacks import attach_callbacks
from chronoprice.web.dashboard.layout import build_layout
from chronoprice.web.dashboard.models import attach_models_callbacks
from chronoprice.web.hardening import QuietRequestHandler, harden

log = logging.getLogger(__name__)


def create_app(settings: Settings, ticker: Ticker | None = None, env: Mapping[str, str] = os.environ) -> dash.Dash:
    """The dashboard and JSON API; building it does no network, database or model I/O."""
    app = dash.Dash(
        __name__,
        title="ChronoPrice",
        assets_folder=str(PROJECT_ROOT / "assets"),
        meta_tags=[{"name": "viewport", "content": "width=device-width, initial-scale=1"}],
        add_log_handler=False,  # its records go through the root logger, in the chosen log format
    )
    app.layout = build_layout(settings)
    ticker = ticker or build_ticker(settings)
    cache = Cache(app.server, config=cache_config(env))
    register_api(app.server, ticker, settings, cache)
    attach_callbacks(app, ticker, cache, settings)
    attach_alert_callbacks(app, ticker, cache, settings)
    attach_models_callbacks(app, ticker, cache, settings)
    harden(app)
    # Dash registers its script bundles on the first request, after marking the setup done, so a
    # concurrent request can find none and answer 500 (plotly/dash#3971): register them now.
    app._setup_server()
    return app


def serve(settings: Settings) -> None:
    """Serve (and tick the watchlist, unless the scheduler is off) until interrupted; a
    database that cannot be used stops it here, with its name."""
    open_store(settings.db).close()
    ticker = build_ticker(settings)
    app = create_app(settings, ticker)
    if settings.scheduler:
        start_scheduler(settings, ticker)
    log.info("ChronoPrice on http://%s:%d/ (%s source, %s)", settings.host, settings.port, settings.source, settings.symbol)
    app.enable_dev_tools(debug=settings.debug)  # what app.run would do: dev tools only in debug mode
    # Werkzeug's server itself, not app.run: Flask's start-up banner is printed, not logged, and
    # would be the one line of a JSON log that is not JSON.
    run_simple(settings.host, settings.port, app.server, use_reloader=settings.debug, use_debugger=settings.debug,
               threaded=True, request_handler=QuietRequestHandler)
