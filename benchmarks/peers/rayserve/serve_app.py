"""Ray Serve applications for the benchmark: a photo in, the top-5 classes out.

One application per model named in ``BENCH_MODELS``, at route prefix ``/<model>``, each a
deployment of ``BENCH_WORKERS`` replicas (reserving no CPU: the cores are shared by the
operating system, as for the other peers). ``POST /<model>`` takes the photo as the raw body
(``Content-Type: image/jpeg``), read with starlette's ``Request.body()``; the reply is
``{"indices": [...], "scores": [...]}``. The HTTP proxy listens on ``BENCH_PORT``
(127.0.0.1). Runs until killed.
"""

from __future__ import annotations

import os
import time

import ray
from classifier import Classifier, served_models
from imageprep import ImageParams
from ray import serve
from starlette.requests import Request


@serve.deployment(ray_actor_options={"num_cpus": 0})
class PhotoClassifier:
    """Decode the photo, preprocess, ``session.run``, top 5."""

    def __init__(self, onnx_path: str, params: ImageParams) -> None:
        self.classifier = Classifier(onnx_path, params)

    async def __call__(self, request: Request) -> dict:
        indices, scores = self.classifier.classify(await request.body())
        return {"indices": indices, "scores": scores}


def main() -> None:
    replicas = int(os.environ.get("BENCH_WORKERS", "1"))
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["BENCH_PORT"])})
    for name, entry in served_models().items():
        app = PhotoClassifier.options(num_replicas=replicas).bind(*entry)
        serve.run(app, name=name, route_prefix=f"/{name}")
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
