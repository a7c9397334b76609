"""Benchmark code that lives in the package so tests and ``bench/*.py`` scripts can import it."""
