"""The work every peer server does for one photo: preprocess, ``session.run``, top 5.

``BENCH_MODELS`` names a JSON file ``{model: {"onnx": path, "image": ImageParams}}`` written
by ``benchmarks/peer_servers.py``; ``BENCH_INTRA_OP_THREADS`` sets ONNX Runtime's intra-op
threads (0: one per core, ONNX Runtime's default). Each peer wraps a :class:`Classifier`
per model in its own serving API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from imageprep import ImageParams, Preprocessor
from PIL import Image

TOP_K = 5


class Classifier:
    """One model: its preprocessing and its ONNX Runtime session (CPU)."""

    def __init__(self, onnx_path: str, params: ImageParams) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_INTRA_OP_THREADS", "0"))
        self.preprocess = Preprocessor(params)
        self._session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self._input = params.input
        self._source = (onnx_path, params)

    def __reduce__(self) -> tuple[type[Classifier], tuple[str, ImageParams]]:
        """Pickled as its ONNX file and parameters: a process that unpickles it (KServe's
        worker processes get their models so) builds its own session."""
        return Classifier, self._source

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """The first output for a batch of preprocessed inputs: ``[n, classes]``."""
        out = self._session.run(None, {self._input: batch})[0]
        return out.reshape(len(batch), -1)

    def classify(self, photo: bytes | Image.Image) -> tuple[list[int], list[float]]:
        """Top-5 class indices and scores for one photo (see :class:`Preprocessor`)."""
        return top_k(self.scores(self.preprocess(photo))[0])


def top_k(scores: np.ndarray) -> tuple[list[int], list[float]]:
    """The :data:`TOP_K` best class indices of one row of scores, with their scores."""
    best = np.argsort(scores)[::-1][:TOP_K]
    return best.tolist(), scores[best].tolist()


def served_models() -> dict[str, tuple[str, ImageParams]]:
    """The ONNX file and the preprocessing of every model named in ``BENCH_MODELS``."""
    doc = json.loads(Path(os.environ["BENCH_MODELS"]).read_text())
    return {name: (e["onnx"], ImageParams.from_json(e["image"])) for name, e in doc.items()}


def load_models() -> dict[str, Classifier]:
    """A :class:`Classifier` for every model named in ``BENCH_MODELS``."""
    return {name: Classifier(*entry) for name, entry in served_models().items()}
