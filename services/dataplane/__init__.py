"""The data plane: run a request against a model (``execute``, ``infer``, ``ready``).

No FastAPI or Starlette here: the HTTP layer decodes requests and calls in.
"""
