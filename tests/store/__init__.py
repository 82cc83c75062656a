"""Tests of store/: SQLite and PostgreSQL, migrate."""
