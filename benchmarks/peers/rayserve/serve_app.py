"""Ray Serve application for the benchmark: ONNX Runtime in one deployment.

``BENCH_MODELS`` is ``name=path.onnx[,name=path.onnx...]``; ``BENCH_PORT`` the HTTP port.
``POST /`` takes ``{"model": name, "tensor": <nested list>}`` as JSON, runs ``session.run``
and answers the top-5 indices and scores of the first output. No image decoding or
preprocessing here. Runs until killed.
"""

from __future__ import annotations

import os
import time

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class OnnxClassifier:
    """One ONNX Runtime session per model; one replica (Ray Serve's default)."""

    def __init__(self, models: dict[str, str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_INTRA_OP_THREADS", "0"))
        self.sessions = {
            name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            for name, path in models.items()
        }

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        session = self.sessions[body["model"]]
        tensor = np.asarray(body["tensor"], dtype=np.float32)
        scores = session.run(None, {session.get_inputs()[0].name: tensor})[0].reshape(-1)
        top = np.argsort(scores)[::-1][:5]
        return {"indices": top.tolist(), "scores": scores[top].tolist()}


def main() -> None:
    models = dict(item.split("=", 1) for item in os.environ["BENCH_MODELS"].split(","))
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["BENCH_PORT"])})
    serve.run(OnnxClassifier.bind(models), route_prefix="/")
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
