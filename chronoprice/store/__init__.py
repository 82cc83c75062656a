"""Persistence: candles, forecasts and tick claims in SQLite through sqlite-utils."""
