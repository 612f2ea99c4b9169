"""The ``classification`` postprocessing kind: class scores -> top-k labels.

The output row (batch 0, all other axes flattened) holds one score per class. With
``softmax`` the scores are logits and go through a numerically stable softmax; otherwise they
are taken as probabilities. Predictions are the ``top_k`` classes (all when ``top_k <= 0``)
whose confidence is at least ``threshold``, best first (ties: lower class id first). Details:
the top-1 ``confidence``, the Shannon ``entropy`` (nats) of the whole distribution, and
``num_classes``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from postprocessing.base import (
    LabelledOptions,
    NonFiniteOutput,
    Options,
    PostprocessingError,
    PostprocessingKind,
    Result,
)
from registry.metadata import Dim, ModelMetadata


class ClassificationPostprocessing(LabelledOptions):
    """Class scores to the top-k labels, with confidence and entropy."""

    kind: Literal["classification"] = "classification"
    softmax: bool = True


def output_tensor(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The named model output, which must be a numeric tensor."""
    try:
        arr = outputs[name]
    except KeyError:
        raise PostprocessingError(
            f"model output {name!r} is missing; the run gave {sorted(outputs)}"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise PostprocessingError(f"model output {name!r} is not a numeric tensor")
    return arr


def declared_classes(shape: list[Dim]) -> int | None:
    """Classes per row from a declared output shape (all axes after the batch), if fixed."""
    dims = shape[1:] if len(shape) > 1 else shape
    if not dims or not all(isinstance(d, int) for d in dims):
        return None
    return math.prod(d for d in dims if isinstance(d, int))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax of a 1-D float64 array, shifted by its maximum so ``exp`` cannot overflow."""
    e = np.exp(scores - scores.max())
    e /= e.sum()
    return e


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy in nats; negative values count as 0 and the rest are renormalised."""
    p = np.clip(probs, 0.0, None)
    total = p.sum()
    if total <= 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum())


def top_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first (ties: lower index first)."""
    if k >= probs.size:
        idx = np.arange(probs.size)
    else:
        kth = -np.partition(-probs, k - 1)[k - 1]
        above = np.flatnonzero(probs > kth)
        idx = np.concatenate([above, np.flatnonzero(probs == kth)[: k - above.size]])
    return idx[np.lexsort((idx, -probs[idx]))]


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """:func:`top_indices` in fewer array operations when ``k`` is small: the ``k`` largest
    by one partition, ordered among themselves; the full rule only when the ``k``-th value
    is tied with values left outside."""
    n = probs.size
    if k >= n or k <= 0:
        return top_indices(probs, k)
    chosen = np.argpartition(probs, n - k)[n - k :]
    values = probs[chosen].tolist()
    if np.count_nonzero(probs >= min(values)) != k:  # a tie across the boundary
        return top_indices(probs, k)
    order = sorted(range(k), key=lambda j: (-values[j], chosen[j]))
    return chosen[order]


class ClassificationPostprocessor:
    """Top-k classes with confidences, for one model's labels.

    Capability: ``classification_output`` is the output it reads (it gives top classes)."""

    def __init__(
        self,
        metadata: ModelMetadata,
        spec: ClassificationPostprocessing,
        labels: list[str] | None,
    ) -> None:
        out = metadata.output_spec(spec.output)
        self._name = out.name
        self._softmax = spec.softmax
        self._labels = labels
        n = declared_classes(out.shape)
        if labels is not None and n is not None and len(labels) != n:
            raise PostprocessingError(
                f"{len(labels)} labels for output {out.name!r}, which has {n} classes"
            )

    @property
    def classification_output(self) -> str:
        """The output whose rows become top classes."""
        return self._name

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result:
        """Predictions and details for one run (batch of 1).

        It runs right after ``session.run``, when the processor's caches hold the model's
        weights instead of NumPy's code and data: each distinct array operation then costs
        tens of microseconds, so the work is done in few of them (the top k chosen on the
        scores, the softmax's exponentials shared by the confidences and the entropy)."""
        arr = output_tensor(outputs, self._name)
        if arr.ndim == 0 or (arr.ndim > 1 and arr.shape[0] != 1):
            raise PostprocessingError(
                f"model output {self._name!r} has shape {list(arr.shape)}; "
                "expected [1, classes] (a batch of 1)"
            )
        scores = (arr[0] if arr.ndim > 1 else arr).reshape(-1).astype(np.float64)
        n = scores.size
        if n == 0:
            raise PostprocessingError(f"model output {self._name!r} is empty")
        if self._labels is not None and len(self._labels) != n:
            raise PostprocessingError(
                f"{len(self._labels)} labels for output {self._name!r}, which has {n} classes"
            )
        high = float(scores.max())  # NaN propagates through max and min
        if not (math.isfinite(high) and math.isfinite(float(scores.min()))):
            raise NonFiniteOutput(f"model output {self._name!r} has non-finite values")
        k = n if options.top_k <= 0 else min(options.top_k, n)
        chosen = top_k_indices(scores, k).tolist()  # softmax keeps the order of the scores
        if self._softmax:
            shifted = scores - high
            exps = np.exp(shifted)
            total = float(exps.sum())
            confidences = [float(exps[i]) / total for i in chosen]
            top = 1.0 / total  # the largest score's exponential is exp(0)
            # the entropy of exps / total: log(total) - sum(exps * shifted) / total
            ent = max(math.log(total) - float(exps @ shifted) / total, 0.0)
        else:
            confidences = [float(scores[i]) for i in chosen]
            top = high
            ent = entropy(scores)
        threshold = options.threshold
        labels = self._labels
        predictions = [
            {
                "class": labels[i] if labels is not None else str(i),
                "confidence": confidence,
                "class_id": i,
            }
            for i, confidence in zip(chosen, confidences, strict=True)
            if confidence >= threshold
        ]
        details = {"confidence": top, "entropy": ent, "num_classes": n}
        return Result(predictions=predictions, details=details)


def classification_postprocessor(
    metadata: ModelMetadata, options: ClassificationPostprocessing, labels: list[str] | None
) -> ClassificationPostprocessor:
    """Factory for ``postprocessing.kind == "classification"``."""
    return ClassificationPostprocessor(metadata, options, labels)


KIND = PostprocessingKind(
    options=ClassificationPostprocessing, factory=classification_postprocessor
)
"""The ``classification`` kind (entry point ``cidserve.postprocessing: classification``)."""
