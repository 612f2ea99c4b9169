"""The peers' standalone preprocessing (benchmarks/peers/imageprep.py) gives the array cidserve's
``image`` preprocessing gives, for models published with cidserve's presets and with other
image settings, on photos of several sizes, an EXIF-rotated one and a grey one
(``peer_servers.check_preprocessing``). The model is a tiny ONNX graph: only its metadata
matters here."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from registry import samples
from registry.local_store import LocalContentStore
from registry.metadata import ModelMetadata
from registry.publish import publish_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import peer_servers

ORIENTATION = 0x0112


def tiny_image_model(path: Path, input_shape: list[int]) -> Path:
    """``y = ReduceMean(x)`` over the spatial axes: any 4-D image input, one output."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=0)],
        "tiny_image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def publish(tmp_path: Path, input_shape: list[int], **how: Any) -> ModelMetadata:
    async def run() -> ModelMetadata:
        store = LocalContentStore(tmp_path / "store")
        try:
            onnx_path = tiny_image_model(tmp_path / "tiny.onnx", input_shape)
            return (await publish_model(store, onnx_path, task="tensor", **how)).metadata
        finally:
            await store.aclose()

    return asyncio.run(run())


def jpeg(img: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    with Image.open(io.BytesIO(samples.sample_image_bytes("coffee", "PNG"))) as img:
        rgb = img.convert("RGB")
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown turned 90 degrees clockwise
    return {
        "224x224": jpeg(rgb.resize((224, 224))),
        "1024x768": jpeg(rgb.resize((1024, 768))),
        "small 90x120": jpeg(rgb.resize((90, 120))),
        "exif-rotated 800x600": jpeg(rgb.resize((800, 600)), exif=exif),
        "grey 640x480": jpeg(rgb.resize((640, 480)).convert("L")),
    }


CUSTOM = {
    "kind": "image",
    "input": "x",
    "size": [160, 200],
    "resize_mode": "shorter_side",
    "crop_ratio": 0.9,
    "interpolation": "lanczos",
    "normalize": {"type": "mean_std", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
    "channel_order": "BGR",
    "layout": "NHWC",
}
MODELS = {
    "efficientnet-lite": ([1, 3, 224, 224], {"preset": "efficientnet-lite"}),
    "imagenet": (["batch", 3, 224, 224], {"preset": "imagenet"}),
    "BGR NHWC 160x200 lanczos": ([1, 160, 200, 3], {"preprocessing": CUSTOM}),
}


@pytest.mark.parametrize("model", list(MODELS))
def test_peer_preprocessing_matches_cidserve(
    tmp_path: Path, photos: dict[str, bytes], model: str
) -> None:
    shape, how = MODELS[model]
    metadata = publish(tmp_path, shape, **how)
    for name, photo in photos.items():
        diff = peer_servers.check_preprocessing(metadata, photo)
        assert diff <= peer_servers.PREPROCESSING_TOLERANCE, name


def test_served_model_carries_the_metadata_settings(tmp_path: Path) -> None:
    metadata = publish(tmp_path, [1, 3, 224, 224], preset="imagenet")
    served = peer_servers.ServedModel.from_metadata(tmp_path / "tiny.onnx", metadata)
    assert served.image.input == "x"
    assert served.image.size == (224, 224)
    assert served.image.interpolation == "bilinear"
    assert served.image.dtype == "float32"
    assert served.image.scale[0] == pytest.approx(1 / (255 * 0.229))
    assert served.to_json()["onnx"] == str(tmp_path / "tiny.onnx")


def test_a_model_without_image_preprocessing_is_refused(tmp_path: Path) -> None:
    metadata = publish(tmp_path, [1, 3, 224, 224], preset="none")
    with pytest.raises(ValueError, match="shorter_side"):
        peer_servers.ServedModel.from_metadata(tmp_path / "tiny.onnx", metadata)


def test_floor_serves_raw_work_over_http(tmp_path: Path, photos: dict[str, bytes]) -> None:
    """The floor yardstick starts in cidserve's environment with no install, answers
    cidserve's JSON body with the class raw ONNX Runtime ranks first for the same photo, and
    refuses a body it cannot read with a 400."""
    import json

    import numpy as np
    import onnxruntime as ort

    from preprocessing import ImagePayload, Limits, create
    from tests.harness import free_port

    metadata = publish(tmp_path, [1, 3, 224, 224], preset="efficientnet-lite")
    served = peer_servers.ServedModel.from_metadata(tmp_path / "tiny.onnx", metadata)
    photo = photos["1024x768"]
    probe = peer_servers.image_request(peer_servers.FLOOR, "tiny", photo)
    server = peer_servers.start(
        peer_servers.FLOOR, {"tiny": served}, tmp_path / "floor", free_port, {"tiny": probe}
    )
    try:
        status, body = peer_servers.post(server.base + probe.path, probe.body, probe.headers, 10)
        assert status == 200
        feeds = create(metadata, Limits())(ImagePayload(photo)).feeds
        session = ort.InferenceSession(str(tmp_path / "tiny.onnx"))
        scores = session.run(None, feeds)[0].reshape(-1)
        assert probe.top1(body) == int(np.argmax(scores))
        assert len(json.loads(body)["indices"]) == 5

        status, body = peer_servers.post(
            server.base + probe.path, b'{"model_id": "tiny"}', probe.headers, 10
        )
        assert status == 400 and b"input_data" in body
        status, _ = peer_servers.post(server.base + "/elsewhere", probe.body, probe.headers, 10)
        assert status == 404
    finally:
        peer_servers.stop(server)
    assert server.proc.poll() is not None
