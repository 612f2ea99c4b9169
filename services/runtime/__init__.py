"""ONNX Runtime: providers, session creation, the optimized-graph cache, the runner, batching.

Imports nothing from the data plane or the HTTP layer.
"""
