"""Benchmarks of gatewayz-metrics against a hand-written floor and its peers.

Run `python -m benchmarks.run` from the repository root; see `benchmarks/run.py`.
"""
