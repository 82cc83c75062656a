"""gunicorn reads this file from the working directory (render.yaml starts it in the repo root)."""


def post_worker_init(worker):
    """Start this worker's watchlist scheduler now that the app is loaded in it (a thread
    started at import would not survive the fork of `--preload`, and importing does no I/O)."""
    import app

    app.start_worker_scheduler()
