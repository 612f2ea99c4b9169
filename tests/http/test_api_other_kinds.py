"""Tabular scoring and object detection through the gateway, with real models."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from postprocessing.detection import DetectionPostprocessing
from postprocessing.score import ScorePostprocessing
from preprocessing.image_options import ImagePreprocessing, ScaleOffset
from preprocessing.tabular import Feature, TabularPreprocessing
from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from tests.conftest import Gateway

FEATURES = [
    "age",
    "income",
    "distance_km",
    "shared_interests",
    "activity",
    "rating",
    "response_rate",
    "tenure_days",
]
SCALE = np.array([10, 1000, 5, 2, 3, 1, 0.2, 100], dtype=np.float64)
OFFSET = np.array([40, 5000, 10, 4, 5, 3, 0.5, 300], dtype=np.float64)


@pytest.fixture(scope="module")
def compatibility_model(workdir: Path, store: LocalContentStore):
    """A scikit-learn regressor on 8 named features -> ONNX (skl2onnx), published as tabular."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(7)
    raw = rng.normal(OFFSET, SCALE, size=(400, 8))
    scaled = (raw - OFFSET) / SCALE
    target = 1 / (1 + np.exp(-(scaled @ np.linspace(-1, 1, 8))))
    reg = GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0)
    reg.fit(scaled.astype(np.float32), target)
    onx = to_onnx(reg, scaled[:1].astype(np.float32), target_opset=17)
    path = workdir / "compat.onnx"
    path.write_bytes(onx.SerializeToString())
    pub = asyncio.run(
        publish_model(
            store,
            path,
            name="compatibility",
            preprocessing=TabularPreprocessing(
                features=[
                    Feature(name=n, offset=o, scale=s)
                    for n, o, s in zip(FEATURES, OFFSET, SCALE, strict=True)
                ]
            ),
            postprocessing=ScorePostprocessing(label="compatibility", clamp=True),
        )
    )
    return pub, reg, raw[:5]


def test_tabular_score_matches_scikit_learn(gateway: Gateway, compatibility_model):
    pub, reg, rows = compatibility_model
    r = gateway.client.post("/api/models/load", json={"metadataCid": pub.metadata_cid})
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    for row in rows:
        features = dict(zip(FEATURES, map(float, row), strict=True))
        r = gateway.client.post(
            "/api/inference/execute",
            json={"model_id": model_id, "input_data": {"format": "features", "content": features}},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        expected = float(reg.predict(((row - OFFSET) / SCALE)[None].astype(np.float32))[0])
        expected = min(max(expected, 0.0), 1.0)
        assert body["predictions"][0]["class"] == "compatibility"
        assert body["details"]["score"] == pytest.approx(expected, abs=1e-5)
        assert 0.0 <= body["details"]["score"] <= 1.0

    missing = {n: 1.0 for n in FEATURES[:-1]}
    r = gateway.client.post(
        "/api/inference/execute",
        json={"model_id": model_id, "input_data": {"format": "features", "content": missing}},
    )
    assert r.status_code == 400
    assert "tenure_days" in r.json()["message"]


@pytest.fixture(scope="module")
def detector(store: LocalContentStore) -> PublishResult:
    """nudenet's YOLOv8n detector (shipped in the PyPI package), letterboxed 320x320."""
    import nudenet
    import nudenet.nudenet as nn_module

    onnx_path = Path(nudenet.__file__).parent / "320n.onnx"
    labels = list(getattr(nn_module, "__labels"))  # the package keeps it module-private
    return asyncio.run(
        publish_model(
            store,
            onnx_path,
            name="nudenet-320n",
            preprocessing=ImagePreprocessing(
                size=(320, 320),
                resize_mode="letterbox",
                interpolation="bilinear",
                normalize=ScaleOffset(scale=1 / 255),
                pad_value=0,
            ),
            postprocessing=DetectionPostprocessing(labels=labels, score_threshold=0.25),
        )
    )


def test_detector_finds_the_astronauts_face_in_image_coordinates(
    gateway: Gateway, detector: PublishResult, photos
):
    r = gateway.client.post("/api/models/load", json={"metadataCid": detector.metadata_cid})
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    # Letterboxing: send a non-square crop so the mapping back matters.
    img = Image.open(io.BytesIO(photos["astronaut"])).crop((0, 0, 512, 384))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    r = gateway.client.post(
        f"/api/models/{model_id}/predict?top_k=10",
        content=buf.getvalue(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    preds = body["predictions"]
    assert preds, body
    for p in preds:
        x1, y1, x2, y2 = p["box"]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 384
        assert p["confidence"] >= 0.25
    faces = [p for p in preds if p["class"] == "FACE_FEMALE"]
    assert faces, [p["class"] for p in preds]
    x1, y1, x2, y2 = faces[0]["box"]
    # Eileen Collins' face sits around x 160-260, y 40-190 in the original photo.
    assert 120 < (x1 + x2) / 2 < 300 and 30 < (y1 + y2) / 2 < 220
