"""Shared state: the key-value interface (in-process or Redis) and the model index."""
