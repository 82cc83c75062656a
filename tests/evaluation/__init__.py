"""Tests of evaluation/: walk-forward, backtest, verdicts."""
