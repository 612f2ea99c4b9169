"""BentoML service for the benchmark: a photo in, the top-5 classes out.

``POST /classify`` takes multipart/form-data, as BentoML's image inputs do: a ``model`` field
(a name from ``BENCH_MODELS``) and the photo as the ``image`` file, which BentoML hands over
as a ``PIL.Image.Image`` opened but not decoded. The reply is ``{"indices": [...], "scores":
[...]}``. ``BENCH_WORKERS`` service worker processes.
"""

from __future__ import annotations

import os

import bentoml
from classifier import Classifier, served_models
from PIL.Image import Image


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")))
class PhotoClassifier:
    """A :class:`Classifier` per model named in ``BENCH_MODELS``."""

    def __init__(self) -> None:
        self.models = {name: Classifier(*entry) for name, entry in served_models().items()}

    @bentoml.api
    def classify(self, model: str, image: Image) -> dict:
        indices, scores = self.models[model].classify(image)
        return {"indices": indices, "scores": scores}
