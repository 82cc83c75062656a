"""Tests of model/: training, engines, forecasters."""
