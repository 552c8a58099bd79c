"""Benchmarks: scripts that print figures (`python -m genrec.benchmarks.NAME`)."""
