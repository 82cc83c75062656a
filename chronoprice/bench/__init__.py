"""`python -m chronoprice bench` (a door): one module per benchmark. engines.py runs the default
report (engines, ticks, history, evaluate) and calls deploy.py (gunicorn, the offline cold start),
watchlist.py and live.py (each in a child process); scale.py is `--scale`, fuzz.py `--fuzz`.
Their figures are quoted in docs/PERFORMANCE.md, docs/SCALING.md and docs/RELIABILITY.md."""

BATCH_ORIGINS = 4096  # origins each engine forecasts in one call for its batch throughput
