"""Helpers that build real nodes, processes and fixtures for tests and benchmarks."""
