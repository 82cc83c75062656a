"""The always-on part: the one place where market, store and model meet (one tick of one
market, history forecasts, live scoring, and the wiring of settings into these objects)."""
