"""The floor: raw ONNX Runtime's work behind the least HTTP a Python server can add.

Not a serving system: a yardstick for what any Python HTTP server must add to raw ONNX
Runtime, so that a server's ratio to raw can be split into what HTTP itself costs here and
what the server's own stack costs. It runs in cidserve's environment and does for one
request exactly what the benchmark's raw contender does (cidserve's ``image``
preprocessing, then ``session.run`` on a session built as raw's are), plus the least a
reply needs: the top 5 class indices and scores. Around that it has no framework, no
middleware, no validation beyond what parsing needs, no metrics and no logging:

* HTTP/1.1 keep-alive over uvloop with httptools' parser (what uvicorn uses), one
  ``transport.write`` a reply;
* the body is cidserve's ``/api/inference/execute`` body, parsed with orjson, the photo
  decoded with pybase64 on the event loop (a 20 kB string takes microseconds);
* one hand-off to a pool of ``BENCH_WORKERS`` threads that preprocesses, runs and ranks;
* a run that starts with nothing else in flight takes a session with one intra-op thread
  per core (raw's sequential setting); the others share a session of
  ``BENCH_INTRA_OP_THREADS`` threads (raw's parallel setting), as cidserve does.

``BENCH_MODELS`` names the models (``{model: {"onnx": path, "metadata": json}}``); the
route is ``POST /api/inference/execute`` with ``{"model_id": ..., "input_data": {"format":
"base64_jpeg", "content": ...}, "options": {"top_k": k}}``; the reply is ``{"indices": [...],
"scores": [...]}``. No pipelining (a client sends one request a connection at a time, as
wrk does). Runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httptools
import numpy as np
import onnxruntime as ort
import orjson
import pybase64
import uvloop

from preprocessing import ImagePayload, Limits, create
from registry.metadata import parse_metadata


def _session(onnx: str, threads: int) -> ort.InferenceSession:
    """A session built as the benchmark's raw contender builds its own."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])


class Model:
    """One model: cidserve's preprocessing, an alone session and a shared one."""

    def __init__(self, onnx: str, metadata: str, shared_threads: int) -> None:
        meta = parse_metadata(metadata.encode())
        self.pre = create(meta, Limits())
        cores = len(os.sched_getaffinity(0))
        self.shared = _session(onnx, shared_threads)
        self.alone = _session(onnx, cores) if cores > shared_threads else self.shared
        self.output = self.shared.get_outputs()[0].name

    def __call__(self, jpeg: bytes, top_k: int, alone: bool) -> bytes:
        feeds = self.pre(ImagePayload(jpeg)).feeds
        session = self.alone if alone else self.shared
        scores = session.run([self.output], feeds)[0].reshape(-1)
        k = max(1, min(top_k, scores.size))
        best = np.argpartition(scores, -k)[-k:]
        best = best[np.argsort(scores[best])[::-1]]
        return orjson.dumps({"indices": best.tolist(), "scores": scores[best].tolist()})


class App:
    def __init__(self, models: dict[str, Model], workers: int) -> None:
        self.models = models
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="floor")
        self.in_flight = 0


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}


def _head(status: int, length: int, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (
        status,
        _REASONS[status],
        length,
        b"" if keep_alive else b"connection: close\r\n",
    )


class Connection(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, b'{"error":"malformed HTTP"}', keep_alive=False)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.chunks)
        self.chunks = []
        keep_alive = self.parser.should_keep_alive()
        asyncio.get_running_loop().create_task(self._handle(self.url, body, keep_alive))

    async def _handle(self, url: bytes, body: bytes, keep_alive: bool) -> None:
        app = self.app
        try:
            if url != b"/api/inference/execute":
                self._send(404, b'{"error":"not found"}', keep_alive)
                return
            doc: dict[str, Any] = orjson.loads(body)
            model = app.models[doc["model_id"]]
            jpeg = pybase64.b64decode(doc["input_data"]["content"], validate=True)
            top_k = int(doc.get("options", {}).get("top_k", 5))
        except (ValueError, KeyError, TypeError) as exc:
            self._send(400, orjson.dumps({"error": str(exc)}), keep_alive)
            return
        alone = app.in_flight == 0
        app.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(app.pool, model, jpeg, top_k, alone)
        except Exception as exc:  # the reply names it
            self._send(500, orjson.dumps({"error": repr(exc)}), keep_alive)
            return
        finally:
            app.in_flight -= 1
        self._send(200, reply, keep_alive)

    def _send(self, status: int, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(_head(status, len(body), keep_alive) + body)
        if not keep_alive:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(app: App, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(app), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    doc = json.loads(Path(os.environ["BENCH_MODELS"]).read_text())
    threads = int(os.environ.get("BENCH_INTRA_OP_THREADS", "1"))
    models = {name: Model(e["onnx"], e["metadata"], threads) for name, e in doc.items()}
    app = App(models, int(os.environ.get("BENCH_WORKERS", "4")))
    uvloop.run(serve(app, int(os.environ["BENCH_PORT"])))


if __name__ == "__main__":
    main()
