"""The ``detection`` postprocessing kind: raw YOLOv8 output -> boxes with classes.

``format="yolov8"``: one output ``[1, 4 + classes, anchors]`` (``[1, anchors, 4 + classes]``
is accepted too: the axis of size ``4 + len(labels)`` is the channel axis; without labels the
smaller axis is). Rows 0-3 are ``cx, cy, w, h`` in input pixels, the rest per-class scores.

Each anchor keeps its best class; anchors scoring below ``max(score_threshold,
options.threshold)`` are dropped; greedy class-aware non-maximum suppression (boxes of
different classes never suppress each other) keeps at most ``max_detections`` boxes, and at
most ``options.top_k`` when that is positive. Boxes are mapped back to the original image
with the ``scale``/``offset`` context the image preprocessor records (``input = original *
scale + offset``) and clipped to ``image_size``; without that context they stay in input
pixels.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from postprocessing.base import (
    LabelledOptions,
    Options,
    PostprocessingError,
    PostprocessingKind,
    PostprocessorBase,
    Result,
)
from postprocessing.classification import output_tensor
from registry.metadata import ModelMetadata


class DetectionPostprocessing(LabelledOptions):
    """Raw detector output to boxes, scores and classes, with non-maximum suppression.

    ``format="yolov8"``: one output ``[1, 4 + classes, anchors]`` with ``cx, cy, w, h`` in
    input pixels followed by per-class scores.
    """

    kind: Literal["detection"] = "detection"
    format: Literal["yolov8"] = "yolov8"
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1, le=10_000)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[n, 4]`` center/size boxes to corner boxes ``x1, y1, x2, y2`` (float64)."""
    cx, cy, w, h = (boxes[:, i].astype(np.float64) for i in range(4))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int
) -> np.ndarray:
    """Greedy class-aware non-maximum suppression; indices kept, best score first.

    A box is dropped when its IoU with a kept box of the same class is above
    ``iou_threshold``. Classes are separated by shifting each class's boxes by a multiple of
    the coordinate span, so one vectorised IoU per kept box handles all classes."""
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes + (classes.astype(np.float64) * span)[:, None]
    x1, y1, x2, y2 = shifted.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = inter / np.maximum(union, np.finfo(np.float64).tiny)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def to_original(boxes: np.ndarray, context: dict[str, Any]) -> np.ndarray:
    """Input-pixel boxes to original-image pixels (clipped), by the preprocessing context."""
    if "scale" not in context or "offset" not in context:
        return boxes
    (sx, sy), (ox, oy) = context["scale"], context["offset"]
    out = (boxes - np.array([ox, oy, ox, oy])) / np.array([sx, sy, sx, sy])
    if "image_size" in context:
        w, h = context["image_size"]
        np.clip(out, 0.0, np.array([w, h, w, h], np.float64), out=out)
    return out


class DetectionPostprocessor(PostprocessorBase):
    """YOLOv8 decoding, thresholding and NMS for one model's labels (boxes, not top classes:
    no ``classification_output``)."""

    __slots__ = ("_labels", "_name", "_spec")

    def __init__(
        self, metadata: ModelMetadata, spec: DetectionPostprocessing, labels: list[str] | None
    ) -> None:
        out = metadata.output_spec(spec.output)
        self._name = out.name
        self._spec = spec
        self._labels = labels
        shape = out.shape
        if len(shape) != 3:
            raise PostprocessingError(
                f"output {out.name!r} has shape {shape}; yolov8 gives [1, 4 + classes, anchors]"
            )
        if labels is not None and isinstance(shape[1], int) and isinstance(shape[2], int):
            self._channels_axis((1, shape[1], shape[2]))

    def _channels_axis(self, shape: tuple[int, ...]) -> int:
        """1 for ``[1, 4 + classes, anchors]``, 2 for ``[1, anchors, 4 + classes]``."""
        a, b = shape[1], shape[2]
        if self._labels is None:
            axis = 1 if a <= b else 2
        elif a == 4 + len(self._labels):
            axis = 1
        elif b == 4 + len(self._labels):
            axis = 2
        else:
            raise PostprocessingError(
                f"output {self._name!r} has shape {list(shape)}; {len(self._labels)} labels "
                f"need an axis of 4 + {len(self._labels)}"
            )
        if shape[axis] < 5:
            raise PostprocessingError(
                f"output {self._name!r} has shape {list(shape)}: no class scores after the box"
            )
        return axis

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result:
        """Boxes, best first, in original-image pixels."""
        arr = output_tensor(outputs, self._name)
        if arr.ndim != 3 or arr.shape[0] != 1:
            raise PostprocessingError(
                f"model output {self._name!r} has shape {list(arr.shape)}; "
                "expected [1, 4 + classes, anchors]"
            )
        rows = arr[0] if self._channels_axis(arr.shape) == 1 else arr[0].T
        class_scores = rows[4:]
        best = class_scores.max(axis=0)
        threshold = max(self._spec.score_threshold, options.threshold)
        cand = np.flatnonzero(best >= threshold)
        classes = class_scores[:, cand].argmax(axis=0)
        scores = best[cand].astype(np.float64)
        boxes = cxcywh_to_xyxy(rows[:4, cand].T)
        limit = self._spec.max_detections
        if options.top_k > 0:
            limit = min(limit, options.top_k)
        keep = nms(boxes, scores, classes, self._spec.iou_threshold, limit)
        mapped = to_original(boxes[keep], context)
        predictions = [
            {
                "class": self._label(int(c)),
                "confidence": float(s),
                "class_id": int(c),
                "box": [round(float(v), 2) for v in box],
            }
            for c, s, box in zip(classes[keep], scores[keep], mapped, strict=True)
        ]
        size = context.get("image_size")
        details = {
            "num_detections": len(predictions),
            "image_size": [int(size[0]), int(size[1])] if size is not None else None,
        }
        return Result(predictions=predictions, details=details)

    def _label(self, class_id: int) -> str:
        return self._labels[class_id] if self._labels is not None else str(class_id)


def detection_postprocessor(
    metadata: ModelMetadata, options: DetectionPostprocessing, labels: list[str] | None
) -> DetectionPostprocessor:
    """Factory for ``postprocessing.kind == "detection"``."""
    return DetectionPostprocessor(metadata, options, labels)


KIND = PostprocessingKind(options=DetectionPostprocessing, factory=detection_postprocessor)
"""The ``detection`` kind (entry point ``cidserve.postprocessing: detection``)."""
