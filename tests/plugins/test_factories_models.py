"""Real ONNX models through the factories: preprocessing -> onnxruntime -> postprocessing."""

from __future__ import annotations

import ast
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from skimage import data

import postprocessing as post
import preprocessing as pp
from postprocessing import Options
from postprocessing.classification import ClassificationPostprocessing
from postprocessing.detection import DetectionPostprocessing
from postprocessing.score import ScorePostprocessing
from preprocessing import FeaturesPayload, ImagePayload, Limits
from preprocessing.image_options import ImagePreprocessing, ScaleOffset
from preprocessing.tabular import Feature, TabularPreprocessing
from registry.metadata import ModelMetadata, TensorSpec, now_utc

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(double)": "float64"}


def session(model: bytes | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def specs(args: list[Any]) -> list[TensorSpec]:
    return [TensorSpec(name=a.name, dtype=_ORT_TYPES[a.type], shape=list(a.shape)) for a in args]


def metadata_for(sess: ort.InferenceSession, pre: Any, postspec: Any) -> ModelMetadata:
    return ModelMetadata(
        name="real-model",
        version="1",
        model={"cid": CID, "size": 1, "sha256": "0" * 64, "opset": 17},
        inputs=specs(sess.get_inputs()),
        outputs=specs(sess.get_outputs()),
        preprocessing=pre,
        postprocessing=postspec,
        created_at=now_utc(),
    )


def predict(
    sess: ort.InferenceSession,
    md: ModelMetadata,
    labels: list[str] | None,
    payload: Any,
    options: Options,
) -> post.Result:
    prepared = pp.create(md, Limits())(payload)
    names = [o.name for o in sess.get_outputs()]
    outputs = dict(zip(names, sess.run(None, prepared.feeds), strict=True))
    return post.create(md, labels)(outputs, prepared.context, options)


# --- a scikit-learn compatibility score: 8 named features -> tabular -> score ------------------

FEATURES = [
    Feature(name="age_gap", offset=5.0, scale=4.0, min=0, max=80),
    Feature(name="shared_interests", offset=3.0, scale=2.0, min=0),
    Feature(name="distance_km", offset=20.0, scale=15.0, min=0),
    Feature(name="messages_per_day", offset=4.0, scale=3.0),
    Feature(name="response_minutes", offset=30.0, scale=20.0),
    Feature(name="profile_overlap", offset=0.5, scale=0.2),
    Feature(name="mutual_friends", offset=2.0, scale=2.0, default=0.0),
    Feature(name="activity_match", offset=0.5, scale=0.25),
]


@pytest.fixture(scope="module")
def compatibility(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(7)
    offsets = np.array([f.offset for f in FEATURES])
    scales = np.array([f.scale for f in FEATURES])
    raw = np.abs(rng.normal(offsets, scales, size=(600, 8)))
    scaled = (raw - offsets) / scales
    target = 1 / (1 + np.exp(-(scaled @ rng.normal(size=8))))  # a score in 0..1
    model = GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0)
    model.fit(scaled.astype(np.float32), target)
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, 8]))], target_opset=17)
    path = tmp_path_factory.mktemp("compat") / "compat.onnx"
    path.write_bytes(onx.SerializeToString())
    sess = session(str(path))
    md = metadata_for(
        sess,
        TabularPreprocessing(features=FEATURES),
        ScorePostprocessing(label="compatibility", clamp=True),
    )
    return {"model": model, "session": sess, "metadata": md, "raw": raw[:25]}


def test_sklearn_score_matches_sklearn(compatibility: dict[str, Any]) -> None:
    model, sess, md = compatibility["model"], compatibility["session"], compatibility["metadata"]
    offsets = np.array([f.offset for f in FEATURES])
    scales = np.array([f.scale for f in FEATURES])
    for row in compatibility["raw"]:
        values = {f.name: float(v) for f, v in zip(FEATURES, row, strict=True)}
        result = predict(sess, md, None, FeaturesPayload(values), Options())
        scaled = ((row - offsets) / scales).astype(np.float32).reshape(1, -1)
        expected = float(np.clip(model.predict(scaled)[0], 0.0, 1.0))
        assert result.details["score"] == pytest.approx(expected, abs=1e-5)
        assert result.predictions == [
            {"class": "compatibility", "confidence": result.details["score"], "class_id": 0}
        ]


def test_sklearn_score_default_feature(compatibility: dict[str, Any]) -> None:
    row = compatibility["raw"][0]
    values = {f.name: float(v) for f, v in zip(FEATURES, row, strict=True)}
    values["mutual_friends"] = 0.0
    sess, md = compatibility["session"], compatibility["metadata"]
    explicit = predict(sess, md, None, FeaturesPayload(values), Options())
    del values["mutual_friends"]
    defaulted = predict(sess, md, None, FeaturesPayload(values), Options())
    assert defaulted.details == explicit.details


# --- a scikit-learn classifier: tabular -> classification (probabilities) ------------------------


def test_sklearn_classifier_probabilities() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    x = iris.data.astype(np.float32)
    model = LogisticRegression(max_iter=500).fit(x, iris.target)
    onx = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={"zipmap": False},
        target_opset=17,
    )
    sess = session(onx.SerializeToString())
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    md = metadata_for(
        sess,
        TabularPreprocessing(features=[Feature(name=n) for n in names]),
        ClassificationPostprocessing(output="probabilities", softmax=False),
    )
    labels = list(iris.target_names)
    sample = x[120]
    result = predict(
        sess,
        md,
        labels,
        FeaturesPayload(dict(zip(names, map(float, sample), strict=True))),
        Options(top_k=3),
    )
    proba = model.predict_proba(sample.reshape(1, -1))[0]
    assert result.predictions[0]["class"] == labels[int(proba.argmax())]
    got = {p["class_id"]: p["confidence"] for p in result.predictions}
    np.testing.assert_allclose([got[i] for i in range(3)], proba, atol=1e-5)
    assert result.details["num_classes"] == 3


# --- the nudenet YOLOv8 detector: image (letterbox) -> detection -------------------------------


def _nudenet_source() -> tuple[Path, list[str], int]:
    """The shipped ONNX file, its labels and its input size, read from the package source."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or spec.origin is None:
        pytest.skip("nudenet is not installed")
    root = Path(spec.origin).parent
    tree = ast.parse((root / "nudenet.py").read_text())
    labels: list[str] = []
    size = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__labels" for t in node.targets
        ):
            labels = ast.literal_eval(node.value)
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            names = [a.arg for a in node.args.args][-len(node.args.defaults) :]
            size = dict(zip(names, node.args.defaults, strict=True))["inference_resolution"].value  # type: ignore[attr-defined]
    return root / f"{size}n.onnx", labels, size


@pytest.fixture(scope="module")
def nudenet() -> dict[str, Any]:
    path, labels, size = _nudenet_source()
    sess = session(str(path))
    md = metadata_for(
        sess,
        ImagePreprocessing(
            size=(size, size),
            resize_mode="letterbox",
            normalize=ScaleOffset(scale=1 / 255),
            channel_order="RGB",
            layout="NCHW",
            pad_value=114,
        ),
        DetectionPostprocessing(labels=labels, score_threshold=0.25, iou_threshold=0.45),
    )
    return {"session": sess, "metadata": md, "labels": labels, "size": size}


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _detect(nudenet: dict[str, Any], pixels: np.ndarray) -> post.Result:
    return predict(
        nudenet["session"],
        nudenet["metadata"],
        nudenet["labels"],
        ImagePayload(_jpeg(pixels)),
        Options(top_k=0),
    )


def test_nudenet_source_facts(nudenet: dict[str, Any]) -> None:
    assert nudenet["size"] == 320
    assert len(nudenet["labels"]) == 18
    assert nudenet["session"].get_outputs()[0].shape[1] == 4 + 18


def test_nudenet_finds_the_astronaut_face(nudenet: dict[str, Any]) -> None:
    astronaut = data.astronaut()  # 512 x 512
    result = _detect(nudenet, astronaut)
    assert result.details["image_size"] == [512, 512]
    assert result.details["num_detections"] == len(result.predictions) >= 1
    confidences = [p["confidence"] for p in result.predictions]
    assert confidences == sorted(confidences, reverse=True)
    for p in result.predictions:
        x1, y1, x2, y2 = p["box"]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
        assert 0.25 <= p["confidence"] <= 1
        assert p["class"] == nudenet["labels"][p["class_id"]]
    faces = [p for p in result.predictions if p["class"] == "FACE_FEMALE"]
    assert faces, result.predictions
    x1, y1, x2, y2 = faces[0]["box"]
    assert x1 < 225 < x2 and y1 < 130 < y2  # her face is around (225, 130)


@pytest.mark.parametrize(("rows", "cols"), [((0, 400), (0, 512)), ((0, 512), (100, 512))])
def test_nudenet_boxes_map_back_through_letterbox_padding(
    nudenet: dict[str, Any], rows: tuple[int, int], cols: tuple[int, int]
) -> None:
    astronaut = data.astronaut()
    full = _detect(nudenet, astronaut)
    face = next(p for p in full.predictions if p["class"] == "FACE_FEMALE")["box"]
    cropped = _detect(nudenet, astronaut[rows[0] : rows[1], cols[0] : cols[1]])
    height, width = rows[1] - rows[0], cols[1] - cols[0]
    assert cropped.details["image_size"] == [width, height]
    match = next(p for p in cropped.predictions if p["class"] == "FACE_FEMALE")["box"]
    expected = [face[0] - cols[0], face[1] - rows[0], face[2] - cols[0], face[3] - rows[0]]
    np.testing.assert_allclose(match, expected, atol=8)
