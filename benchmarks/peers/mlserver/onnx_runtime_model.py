"""Seldon MLServer runtime for the benchmark: one ONNX file, served over the V2 protocol.

MLServer has no ONNX runtime on PyPI, so this is the smallest custom ``MLModel``: the tensor
arrives as a V2 input, is decoded with MLServer's ``NumpyCodec``, goes to ``session.run`` and
every model output goes back as a V2 output. No image decoding or preprocessing here.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """``session.run`` on the decoded V2 input; every output returned."""

    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_INTRA_OP_THREADS", "0"))
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        values = self._session.run(self._outputs, {self._input: tensor})
        pairs = zip(self._outputs, values, strict=True)
        outputs = [NumpyCodec.encode_output(name, value) for name, value in pairs]
        return InferenceResponse(model_name=self.name, outputs=outputs)
