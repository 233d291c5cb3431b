"""The decoder and what it stands on: rows, schedule, sampling, engines, KV cache.

Imports nothing above it (tests/test_layers.py holds the wall).
"""
