"""Triton Inference Server through PyTriton for the benchmark: a photo in, the top 5 out.

Every model named in ``BENCH_MODELS`` is bound to Triton (``Triton.bind``) with one BYTES
input ``image`` (the photo) and two outputs, ``indices`` (INT64) and ``scores`` (FP32), five
each. Dynamic batching is on: Triton gathers concurrent requests (up to ``MAX_BATCH``,
waiting at most ``QUEUE_DELAY_US`` for more) into one call of the inference function, which
preprocesses each photo and runs the batch in one ``session.run``. ``BENCH_WORKERS`` model
instances a model (each with its own session) serve batches side by side. Triton's HTTP
endpoint listens on ``BENCH_PORT`` (127.0.0.1); clients send the photo with the V2 binary
tensor data extension. Runs until killed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from classifier import TOP_K, Classifier, served_models, top_k
from imageprep import ImageParams
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH = 16
QUEUE_DELAY_US = 2000

Infer = Callable[..., dict[str, np.ndarray]]


def infer_function(onnx_path: str, params: ImageParams) -> Infer:
    """One model instance: a session, and the function Triton calls with each batch."""
    classifier = Classifier(onnx_path, params)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        inputs = np.concatenate([classifier.preprocess(bytes(photo[0])) for photo in image])
        best = [top_k(row) for row in classifier.scores(inputs)]
        return {
            "indices": np.asarray([indices for indices, _ in best], np.int64),
            "scores": np.asarray([scores for _, scores in best], np.float32),
        }

    return infer


def main() -> None:
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=int(os.environ["BENCH_PORT"]),
        allow_grpc=False,
        allow_metrics=False,
    )
    instances = int(os.environ.get("BENCH_WORKERS", "1"))
    with Triton(config=config) as triton:
        for name, (onnx_path, params) in served_models().items():
            triton.bind(
                model_name=name,
                infer_func=[infer_function(onnx_path, params) for _ in range(instances)],
                inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                outputs=[
                    Tensor(name="indices", dtype=np.int64, shape=(TOP_K,)),
                    Tensor(name="scores", dtype=np.float32, shape=(TOP_K,)),
                ],
                config=ModelConfig(
                    max_batch_size=MAX_BATCH,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US),
                ),
            )
        triton.serve()


if __name__ == "__main__":
    main()
