"""KServe custom model server for the benchmark: a photo in, the top-5 classes out.

One ``kserve.Model`` per model named in ``BENCH_MODELS``, served by ``ModelServer().start``
(command-line options such as ``--http_port`` and ``--workers`` are KServe's own). The photo
arrives as KServe's V1 JSON image input, ``{"instances": [{"image": {"b64": ...}}]}`` at
``POST /v1/models/<name>:predict``; the reply is ``{"predictions": [{"indices": [...],
"scores": [...]}]}``. Runs until killed.
"""

from __future__ import annotations

import base64

from classifier import Classifier, served_models
from imageprep import ImageParams
from kserve import Model, ModelServer


class PhotoClassifier(Model):
    """Decode the photo, preprocess, ``session.run``, top 5."""

    def __init__(self, name: str, onnx_path: str, params: ImageParams) -> None:
        super().__init__(name)
        self._onnx_path, self._params = onnx_path, params
        self.load()

    def load(self) -> bool:
        self._classifier = Classifier(self._onnx_path, self._params)
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        photo = base64.b64decode(payload["instances"][0]["image"]["b64"])
        indices, scores = self._classifier.classify(photo)
        return {"predictions": [{"indices": indices, "scores": scores}]}


def main() -> None:
    models = [PhotoClassifier(name, *entry) for name, entry in served_models().items()]
    ModelServer().start(models)


if __name__ == "__main__":
    main()
