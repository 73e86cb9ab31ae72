"""Benchmarks for labvault (not timed tests): run with ``python -m bench.<name>``.

See bench/README.md. Nothing in this package is importable from ``src/labvault``.
"""
