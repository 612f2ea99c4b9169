"""Seldon MLServer runtime for the benchmark: a photo in, the top-5 classes out (V2 protocol).

A custom ``MLModel`` per served model (``model-settings.json``: ``parameters.uri`` is the ONNX
file, ``parameters.extra.image`` its preprocessing). The photo arrives as a V2 ``BYTES`` input
carried as base64 (``content_type: base64``), decoded by MLServer's ``Base64Codec``; the
reply holds two V2 outputs, ``indices`` (INT64) and ``scores`` (FP32), ``[1, 5]`` each.
"""

from __future__ import annotations

import numpy as np
from classifier import Classifier
from imageprep import ImageParams
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class PhotoClassifier(MLModel):
    """Decode the photo, preprocess, ``session.run``, top 5."""

    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        extra = self.settings.parameters.extra
        self._classifier = Classifier(uri, ImageParams.from_json(extra["image"]))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        [photo] = self.decode(payload.inputs[0], default_codec=Base64Codec)
        indices, scores = self._classifier.classify(photo)
        outputs = [
            NumpyCodec.encode_output("indices", np.asarray([indices], np.int64)),
            NumpyCodec.encode_output("scores", np.asarray([scores], np.float32)),
        ]
        return InferenceResponse(model_name=self.name, outputs=outputs)
