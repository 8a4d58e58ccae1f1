"""Benchmarks: `python -m hiervit.bench op|model|det ...` prints tables (see `--help`).

Op rows are measured one per fresh worker process, so peak memory is that of the measured call alone and a compiled
peer's caches never leak into another row. Speed lives here, never in the tests.
"""
