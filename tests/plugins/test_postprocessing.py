"""Postprocessing kinds on hand-built output arrays."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import postprocessing as post
from postprocessing import Options, PostprocessingError
from postprocessing.classification import ClassificationPostprocessing
from postprocessing.detection import DetectionPostprocessing, nms
from postprocessing.score import ScorePostprocessing
from preprocessing.tensor import TensorPreprocessing
from registry.metadata import ModelMetadata, now_utc

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def postprocessor(spec: Any, out_shape: list[Any], labels: list[str] | None = None) -> Any:
    md = ModelMetadata(
        name="test-model",
        version="1",
        model={"cid": CID, "size": 1, "sha256": "0" * 64, "opset": 17},
        inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        outputs=[{"name": "out", "dtype": "float32", "shape": out_shape}],
        preprocessing=TensorPreprocessing(),
        postprocessing=spec,
        created_at=now_utc(),
    )
    return post.create(md, labels)


# --- classification ----------------------------------------------------------------------------


def test_classification_softmax_top_k_labels() -> None:
    labels = ["cat", "dog", "fox", "owl"]
    run = postprocessor(ClassificationPostprocessing(), ["batch", 4], labels)
    logits = np.array([[1000.0, 1002.0, 999.0, 1001.0]], np.float32)  # overflows a naive exp
    result = run({"out": logits}, {}, Options(top_k=3))
    e = np.exp(np.array([1.0, 3.0, 0.0, 2.0]))
    probs = e / e.sum()
    assert [p["class"] for p in result.predictions] == ["dog", "owl", "cat"]
    assert [p["class_id"] for p in result.predictions] == [1, 3, 0]
    assert result.predictions[0]["confidence"] == pytest.approx(probs[1], rel=1e-9)
    assert all(isinstance(p["confidence"], float) for p in result.predictions)
    assert result.details["confidence"] == pytest.approx(probs[1])
    assert result.details["entropy"] == pytest.approx(-(probs * np.log(probs)).sum())
    assert result.details["num_classes"] == 4


def test_classification_probabilities_threshold_and_no_labels() -> None:
    run = postprocessor(ClassificationPostprocessing(softmax=False), [None, 5])
    probs = np.array([[0.1, 0.4, 0.05, 0.3, 0.15]])
    result = run({"out": probs}, {}, Options(top_k=0, threshold=0.15))
    assert [(p["class"], p["confidence"]) for p in result.predictions] == [
        ("1", 0.4),
        ("3", 0.3),
        ("4", 0.15),
    ]


def test_classification_uniform_entropy() -> None:
    run = postprocessor(ClassificationPostprocessing(), [1, 1000])
    result = run({"out": np.zeros((1, 1000), np.float32)}, {}, Options(top_k=2))
    assert result.details["entropy"] == pytest.approx(math.log(1000))
    assert [p["class_id"] for p in result.predictions] == [0, 1]  # ties: lower id first


def test_classification_label_count_mismatch() -> None:
    with pytest.raises(PostprocessingError, match="3 labels for output 'out', which has 4"):
        postprocessor(ClassificationPostprocessing(), ["batch", 4], ["a", "b", "c"])
    run = postprocessor(ClassificationPostprocessing(), ["batch", "classes"], ["a", "b", "c"])
    with pytest.raises(PostprocessingError, match=r"3 labels .* which has 4 classes"):
        run({"out": np.zeros((1, 4))}, {}, Options())


def test_classification_bad_outputs() -> None:
    run = postprocessor(ClassificationPostprocessing(), ["batch", 3])
    with pytest.raises(PostprocessingError, match="output 'out' is missing"):
        run({"other": np.zeros((1, 3))}, {}, Options())
    with pytest.raises(PostprocessingError, match="non-finite"):
        run({"out": np.array([[0.0, np.nan, 1.0]])}, {}, Options())
    with pytest.raises(PostprocessingError, match="a batch of 1"):
        run({"out": np.zeros((2, 3))}, {}, Options())


def test_classification_top_k_matches_a_full_sort_with_ties() -> None:
    """The top k come out as a full sort would give them: best first, ties by lower id, also
    when the k-th value is tied with classes left out."""
    run = postprocessor(ClassificationPostprocessing(), [1, 50])
    rng = np.random.default_rng(7)
    for trial in range(200):
        logits = rng.integers(0, 6 if trial % 2 else 1000, size=(1, 50)).astype(np.float32)
        k = int(rng.integers(1, 8))
        result = run({"out": logits}, {}, Options(top_k=k))
        order = sorted(range(50), key=lambda i: (-float(logits[0, i]), i))[:k]
        assert [p["class_id"] for p in result.predictions] == order


def test_classification_non_finite_scores_are_refused_quietly() -> None:
    run = postprocessor(ClassificationPostprocessing(), ["batch", 3])
    for bad in (np.inf, -np.inf, np.nan):
        with (
            np.errstate(all="raise"),
            pytest.raises(PostprocessingError, match="non-finite"),
        ):
            run({"out": np.array([[0.0, bad, 1.0]])}, {}, Options())


# --- score -------------------------------------------------------------------------------------


def test_score_plain_sigmoid_clamp() -> None:
    plain = postprocessor(ScorePostprocessing(label="compatibility"), [None, 1])
    result = plain({"out": np.array([[0.73]], np.float32)}, {}, Options())
    assert result.predictions == [
        {"class": "compatibility", "confidence": pytest.approx(0.73), "class_id": 0}
    ]
    assert result.details["score"] == pytest.approx(0.73)
    squashed = postprocessor(ScorePostprocessing(sigmoid=True), [None, 1])
    assert squashed({"out": np.array([[0.0]])}, {}, Options()).details["score"] == 0.5
    assert squashed({"out": np.array([[-1000.0]])}, {}, Options()).details["score"] == 0.0
    clamped = postprocessor(ScorePostprocessing(clamp=True), [None])
    assert clamped({"out": np.array([1.2])}, {}, Options()).details["score"] == 1.0
    assert clamped({"out": np.array([-0.1])}, {}, Options()).details["score"] == 0.0


def test_score_needs_exactly_one_value() -> None:
    with pytest.raises(PostprocessingError, match="2 values per request"):
        postprocessor(ScorePostprocessing(), [None, 2])
    run = postprocessor(ScorePostprocessing(), [None, "n"])
    with pytest.raises(PostprocessingError, match=r"shape \[1, 2\]"):
        run({"out": np.array([[0.2, 0.8]])}, {}, Options())


# --- detection ---------------------------------------------------------------------------------


def yolo_output(rows: list[tuple[float, float, float, float, int, float]], nc: int) -> np.ndarray:
    """[1, 4 + nc, anchors] from (cx, cy, w, h, class, score) rows."""
    out = np.zeros((1, 4 + nc, len(rows)), np.float32)
    for j, (cx, cy, w, h, c, s) in enumerate(rows):
        out[0, :4, j] = (cx, cy, w, h)
        out[0, 4 + c, j] = s
        out[0, 4 + (c + 1) % nc, j] = s / 10  # a weaker second class: must not win
    return out


LABELS = ["face", "hand", "foot"]
ROWS = [
    (100, 100, 40, 40, 0, 0.9),  # face
    (104, 102, 40, 40, 0, 0.8),  # same face, shifted: suppressed
    (102, 100, 40, 40, 1, 0.7),  # overlapping, but a hand: kept
    (250, 250, 20, 30, 2, 0.6),  # foot elsewhere
    (300, 50, 20, 20, 0, 0.1),  # below the score threshold
]


def test_detection_nms_is_class_aware() -> None:
    run = postprocessor(DetectionPostprocessing(), [1, 7, "anchors"], LABELS)
    result = run({"out": yolo_output(ROWS, 3)}, {}, Options(top_k=0))
    got = [(p["class"], round(p["confidence"], 3)) for p in result.predictions]
    assert got == [("face", 0.9), ("hand", 0.7), ("foot", 0.6)]
    assert result.predictions[0]["box"] == [80.0, 80.0, 120.0, 120.0]
    assert result.predictions[0]["class_id"] == 0
    assert result.details == {"num_detections": 3, "image_size": None}


def test_detection_transposed_output_threshold_and_top_k() -> None:
    run = postprocessor(DetectionPostprocessing(), [1, "anchors", 7], LABELS)
    transposed = yolo_output(ROWS, 3).transpose(0, 2, 1).copy()
    assert len(run({"out": transposed}, {}, Options(top_k=0)).predictions) == 3
    assert len(run({"out": transposed}, {}, Options(top_k=2)).predictions) == 2
    high = run({"out": transposed}, {}, Options(top_k=0, threshold=0.75))
    assert [p["class"] for p in high.predictions] == ["face"]


def test_detection_max_detections_and_no_labels() -> None:
    run = postprocessor(DetectionPostprocessing(max_detections=1), [1, 7, 5])
    result = run({"out": yolo_output(ROWS, 3)}, {}, Options(top_k=0))
    assert [(p["class"], p["class_id"]) for p in result.predictions] == [("0", 0)]


def test_detection_maps_boxes_back_through_letterbox() -> None:
    # A 640x480 image letterboxed into 320x320: scale 0.5, 40 px of padding on top.
    context = {"image_size": (640, 480), "scale": (0.5, 0.5), "offset": (0.0, 40.0)}
    rows = [(160, 160, 100, 60, 0, 0.9), (10, 270, 40, 40, 1, 0.8)]
    run = postprocessor(DetectionPostprocessing(), [1, 7, 2], LABELS)
    result = run({"out": yolo_output(rows, 3)}, context, Options(top_k=0))
    assert result.predictions[0]["box"] == [220.0, 180.0, 420.0, 300.0]
    # The second box reaches into the padding and past the left edge: clipped to the image.
    assert result.predictions[1]["box"] == [0.0, 420.0, 60.0, 480.0]
    assert result.details["image_size"] == [640, 480]


def test_detection_label_count_must_fit_output() -> None:
    with pytest.raises(PostprocessingError, match="need an axis of 4 \\+ 3"):
        postprocessor(DetectionPostprocessing(), [1, 9, 2100], LABELS)


def test_nms_unit() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30.0]])
    scores = np.array([0.5, 0.9, 0.8, 0.1])
    classes = np.array([0, 0, 1, 0])
    assert nms(boxes, scores, classes, 0.45, 100).tolist() == [1, 2, 3]
    assert nms(boxes, scores, classes, 0.45, 2).tolist() == [1, 2]
    assert nms(boxes, scores, classes, 0.99, 100).tolist() == [1, 2, 0, 3]
    assert nms(boxes[:0], scores[:0], classes[:0], 0.5, 10).tolist() == []
