"""Requests to the linear models of ``tests/models.py`` and their exact answers.

``y = x @ W + b`` with the seeded weights of :func:`tests.models.linear_weights`: the V2
route returns ``y`` itself; ``/api/inference/execute`` returns the classifier's softmax over
``y``, every class when ``top_k`` is the number of outputs. A reply is right when every number
in it is the expected one.
"""

from __future__ import annotations

import json

import httpx
import numpy as np

from tests.models import linear_weights


class Linear:
    """The expected answers of ``linear_model(seed=seed, n_in=n_in, n_out=n_out)``."""

    def __init__(self, seed: int, n_in: int = 8, n_out: int = 4) -> None:
        self.n_in = n_in
        self.n_out = n_out
        self.w, self.b = linear_weights(seed, n_in, n_out)
        rng = np.random.default_rng(1000 + seed)
        # A few fixed inputs, so that repeated requests can be prediction-cache hits.
        self.inputs = [rng.standard_normal(n_in).astype(np.float32) for _ in range(4)]

    def y(self, x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float64) @ self.w.astype(np.float64)) + self.b

    # -- /api/inference/execute ---------------------------------------------------------------

    def execute_body(self, model_id: str, k: int) -> tuple[bytes, np.ndarray]:
        x = self.inputs[k % len(self.inputs)]
        doc = {
            "model_id": model_id,
            "input_data": {"format": "tensor", "content": [x.tolist()]},
            "options": {"top_k": self.n_out},
        }
        return json.dumps(doc).encode(), x

    def execute_is_right(self, r: httpx.Response, x: np.ndarray) -> bool:
        y = self.y(x)
        p = np.exp(y - y.max())
        p /= p.sum()
        predictions = r.json()["predictions"]
        if sorted(int(e["class_id"]) for e in predictions) != list(range(self.n_out)):
            return False
        return all(abs(float(e["confidence"]) - p[int(e["class_id"])]) < 1e-4 for e in predictions)

    # -- /v2/models/{id}/infer ----------------------------------------------------------------

    def v2_body(self, x: np.ndarray) -> bytes:
        doc = {
            "inputs": [
                {"name": "x", "shape": [1, self.n_in], "datatype": "FP32", "data": x.tolist()}
            ]
        }
        return json.dumps(doc).encode()

    def v2_is_right(self, r: httpx.Response, x: np.ndarray) -> bool:
        out = r.json()["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float64)
        want = self.y(x)
        tolerance = 1e-4 * max(1.0, float(np.abs(want).max())) * (self.n_in**0.5)
        return out["shape"] == [1, self.n_out] and bool(np.allclose(got, want, atol=tolerance))
