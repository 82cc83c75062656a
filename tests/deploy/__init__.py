"""Tests of the deployed shapes: gunicorn, python app.py, the scaled setup on PostgreSQL."""
