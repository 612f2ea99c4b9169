"""REST routes, one module per resource: models, inference, health, metrics, and ``/v2``."""
