"""BentoML service for the benchmark: ONNX Runtime behind one JSON API.

``BENCH_MODELS`` is ``name=path.onnx[,name=path.onnx...]``. ``POST /predict`` takes
``{"model": name, "tensor": <nested list>}`` (BentoML's idiomatic ``np.ndarray`` JSON input),
runs ``session.run`` and answers the top-5 indices and scores of the first output. No image
decoding or preprocessing here.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=1)
class OnnxClassifier:
    """One ONNX Runtime session per model named in ``BENCH_MODELS``."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_INTRA_OP_THREADS", "0"))
        self.sessions: dict[str, ort.InferenceSession] = {}
        for item in os.environ["BENCH_MODELS"].split(","):
            name, path = item.split("=", 1)
            self.sessions[name] = ort.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )

    @bentoml.api
    def predict(self, model: str, tensor: np.ndarray) -> dict:
        session = self.sessions[model]
        feed = {session.get_inputs()[0].name: tensor.astype(np.float32, copy=False)}
        scores = session.run(None, feed)[0].reshape(-1)
        top = np.argsort(scores)[::-1][:5]
        return {"indices": top.tolist(), "scores": scores[top].tolist()}
