"""gunicorn reads this file from the working directory (render.yaml starts it in the repo root)."""

import os
import shutil
import tempfile

# Every worker keeps its metrics in files here and GET /metrics in any worker adds them all up
# (prometheus_client's multiprocess mode); it must be set before the app, and so prometheus_client,
# is imported. A folder of its own each start, so a restart does not add up the last run's counts.
_OWN_METRICS_FOLDER = None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else tempfile.mkdtemp(prefix="chronoprice-metrics-")
if _OWN_METRICS_FOLDER:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_FOLDER


def post_worker_init(worker):
    """Start this worker's watchlist scheduler now that the app is loaded in it (a thread
    started at import would not survive the fork of `--preload`, and importing does no I/O)."""
    import app

    app.start_worker_scheduler()


def on_exit(server):
    if _OWN_METRICS_FOLDER:
        shutil.rmtree(_OWN_METRICS_FOLDER, ignore_errors=True)
