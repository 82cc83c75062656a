"""Tests of web/: the API, the dashboard, hardening, the browser."""
