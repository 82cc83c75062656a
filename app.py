"""ChronoPrice entry point: `python app.py [flags]` serves the dashboard; gunicorn uses `server`."""

import argparse
import os
import sys

from chronoprice.config import add_settings_arguments, settings_from, settings_from_args
from chronoprice.logs import configure_logging
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
    # Under gunicorn, settings come from the environment only; building the app does no I/O.
    settings = settings_from({}, os.environ)
    configure_logging(settings.log_format)
    app = create_app(settings)
    server = app.server
