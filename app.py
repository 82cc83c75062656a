"""ChronoPrice entry point: `python app.py [flags]` serves the dashboard; gunicorn uses `server`."""

import argparse
import os
import sys

from chronoprice.config import add_settings_arguments, settings_from, settings_from_args
from chronoprice.logs import configure_logging
from chronoprice.service.build import build_ticker, start_scheduler
from chronoprice.web.server import create_app, serve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve the ChronoPrice dashboard.")
    add_settings_arguments(parser)
    try:
        settings = settings_from_args(parser.parse_args(argv), os.environ)
        configure_logging(settings.log_format)
        serve(settings)
    except (ValueError, RuntimeError) as error:  # bad settings, unusable database or exchange id
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    # Under gunicorn, settings come from the environment only; importing does no I/O. Each
    # worker starts its scheduler from gunicorn.conf.py once it has booted; the store's lease
    # lets one of them tick the watchlist, and another takes over if it dies.
    settings = settings_from({}, os.environ)
    configure_logging(settings.log_format)
    ticker = build_ticker(settings)
    app = create_app(settings, ticker)
    server = app.server

    def start_worker_scheduler() -> None:
        if settings.scheduler:
            start_scheduler(settings, ticker)
