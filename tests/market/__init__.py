"""Tests of market/: sources, candles, candle files, the stream."""
