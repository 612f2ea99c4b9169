"""The HTTP layer: routes, request/response schemas, input decoding, the error table.

Nothing else in cidserve imports this package; it turns HTTP requests into calls on the data
plane (:mod:`services.dataplane`) and the model repository (:mod:`services.repository`).
"""
