"""Metrics, the per-request log context and log formatting."""
