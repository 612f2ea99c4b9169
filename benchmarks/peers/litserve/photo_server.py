"""LitServe server for the benchmark: a photo in, the top-5 classes out.

One ``LitAPI`` per model named in ``BENCH_MODELS``, each at ``POST /<model>/predict``, all in
one ``LitServer`` on the CPU with ``BENCH_WORKERS`` inference worker processes per model
(``workers_per_device``) and LitServe's default number of API server processes (one per
inference worker). The photo arrives as JSON, ``{"image_data": <base64>}`` (the field of
LitServe's own ``ImageInput`` schema); the reply is ``{"indices": [...], "scores": [...]}``.
Runs until killed.
"""

from __future__ import annotations

import base64
import os

import litserve as ls
from classifier import Classifier, served_models
from imageprep import ImageParams


class PhotoAPI(ls.LitAPI):
    """Decode the photo, preprocess, ``session.run``, top 5."""

    def __init__(self, model: str, onnx_path: str, params: ImageParams) -> None:
        super().__init__(api_path=f"/{model}/predict")
        self._onnx_path, self._params = onnx_path, params

    def setup(self, device: str) -> None:
        self._classifier = Classifier(self._onnx_path, self._params)

    def decode_request(self, request: dict) -> bytes:
        return base64.b64decode(request["image_data"])

    def predict(self, photo: bytes) -> tuple[list[int], list[float]]:
        return self._classifier.classify(photo)

    def encode_response(self, output: tuple[list[int], list[float]]) -> dict:
        indices, scores = output
        return {"indices": indices, "scores": scores}


def main() -> None:
    apis = [PhotoAPI(name, *entry) for name, entry in served_models().items()]
    workers = int(os.environ.get("BENCH_WORKERS", "1"))
    server = ls.LitServer(apis, accelerator="cpu", workers_per_device=workers)
    server.run(host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), generate_client_file=False)


if __name__ == "__main__":
    main()
