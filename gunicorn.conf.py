"""gunicorn reads this file from the working directory (render.yaml starts it in the repo root)."""

import os
import shutil
import tempfile

# Every worker keeps its metrics in files here and GET /metrics in any worker adds them all up
# (prometheus_client's multiprocess mode); it must be set before the app, and so prometheus_client,
# is imported. A folder of its own each start, so a restart does not add up the last run's counts.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chronoprice-metrics-")
    _OWN_METRICS_FOLDER = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _OWN_METRICS_FOLDER = None


def post_worker_init(worker):
    """Start this worker's watchlist scheduler now that the app is loaded in it (a thread
    started at import would not survive the fork of `--preload`, and importing does no I/O)."""
    import app

    app.start_worker_scheduler()


def on_exit(server):
    if _OWN_METRICS_FOLDER:
        shutil.rmtree(_OWN_METRICS_FOLDER, ignore_errors=True)
