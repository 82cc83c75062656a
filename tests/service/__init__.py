"""Tests of service/: ticks, the watchlist, the guard, the registry, alerts, the live board, faults and restarts."""
