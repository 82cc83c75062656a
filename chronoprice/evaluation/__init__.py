"""Accuracy: pure metrics (metrics.py, imported by model training), the walk-forward that drives
forecasters, and the HTML report."""
