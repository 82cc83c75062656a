"""ChronoPrice: a live crypto-forecasting dashboard with an honest scoreboard."""

__version__ = "0.1.0"
