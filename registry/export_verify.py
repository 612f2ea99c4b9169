"""Does the exported ONNX model compute what the PyTorch model computes?

:func:`verification_inputs` gives the cases: seeded random inputs at the shapes the user gave,
the same with a larger batch (the batch axis is exported as dynamic, so it must work), and the
user's ``--sample`` arrays. :func:`compare` runs each case through torch and through ONNX
Runtime (CPU, the graph optimizations the server uses) and measures the largest absolute
difference (:func:`max_abs_error`); above the tolerance it raises :class:`ToleranceExceeded`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.export import ExportError, _require
from registry.torch_source import one_line

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "MAX_INPUT_ELEMENTS",
    "Case",
    "ToleranceExceeded",
    "compare",
    "load_sample",
    "max_abs_error",
    "torch_outputs",
    "verification_inputs",
]

MAX_INPUT_ELEMENTS = 1 << 27
"""Largest input (elements, 512 MiB of float32) a check builds or reads."""
EXTRA_BATCH = 2
"""The second random case has this many more rows than the shape given."""


@dataclass(frozen=True)
class Case:
    """One verification input: ``label`` names it in messages (``random``, ``sample``)."""

    label: str
    arrays: tuple[np.ndarray, ...]


class ToleranceExceeded(ExportError):
    """ONNX Runtime's outputs differ from torch's by more than the tolerance."""

    def __init__(self, error: float, tolerance: float, case: str) -> None:
        super().__init__(
            f"ONNX Runtime differs from torch on the {case} input: max abs error "
            f"{error:.3g} > tolerance {tolerance:g}"
        )
        self.error = error
        self.tolerance = tolerance
        self.case = case


def _elements(shape: Sequence[int]) -> int:
    return math.prod(shape)


def verification_inputs(
    shapes: Sequence[tuple[int, ...]], seed: int, samples: Sequence[np.ndarray] = ()
) -> list[Case]:
    """Seeded standard-normal float32 inputs at ``shapes``, again with ``EXTRA_BATCH`` more
    rows, then ``samples`` (one array per input) when given."""
    rng = np.random.default_rng(seed)
    cases = []
    for label, extra in (("random", 0), (f"random batch+{EXTRA_BATCH}", EXTRA_BATCH)):
        arrays = []
        for shape in shapes:
            full = (shape[0] + extra, *shape[1:])
            if _elements(full) > MAX_INPUT_ELEMENTS:
                raise ExportError(
                    f"input shape {list(full)} has more than {MAX_INPUT_ELEMENTS} elements"
                )
            arrays.append(rng.standard_normal(full, dtype=np.float32))
        cases.append(Case(label, tuple(arrays)))
    if samples:
        cases.append(Case("sample", tuple(samples)))
    return cases


def load_sample(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The ``.npy`` array at ``path`` as float32, checked against the input's ``shape`` (any
    batch size; the other dimensions as given). No pickles are read."""
    if not path.is_file():
        raise ExportError(f"--sample {path}: no such file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ExportError(f"--sample {path} is not a .npy array: {one_line(exc)}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ExportError(f"--sample {path} must hold one numeric array")
    if array.ndim != len(shape) or tuple(array.shape[1:]) != tuple(shape[1:]):
        raise ExportError(
            f"--sample {path} has shape {list(array.shape)}; the input is {['batch', *shape[1:]]}"
        )
    if array.size == 0 or array.size > MAX_INPUT_ELEMENTS:
        raise ExportError(f"--sample {path} has {array.size} elements")
    return np.ascontiguousarray(array, dtype=np.float32)


def _flatten(value: Any, out: list[np.ndarray]) -> None:
    torch = _require("torch")
    if isinstance(value, torch.Tensor):
        out.append(value.detach().cpu().numpy())
    elif isinstance(value, (tuple, list)):
        for item in value:
            _flatten(item, out)
    else:
        raise ExportError(
            f"the model returned {type(value).__name__}; export needs a tensor or a "
            "tuple/list of tensors"
        )


def torch_outputs(model: nn.Module, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``model(*arrays)`` under ``no_grad``, its outputs flattened in ONNX order."""
    torch = _require("torch")
    try:
        with torch.no_grad():
            result = model(*(torch.from_numpy(np.array(a)) for a in arrays))
    except Exception as exc:
        raise ExportError(f"the model failed on the input: {one_line(exc)}") from None
    out: list[np.ndarray] = []
    _flatten(result, out)
    return out


def max_abs_error(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """The largest ``|expected - actual|`` over every output; ``inf`` when the outputs differ
    in number or shape, or a NaN appears in one where the other has a number."""
    if len(expected) != len(actual):
        return math.inf
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        e64 = np.asarray(e, dtype=np.float64)
        a64 = np.asarray(a, dtype=np.float64)
        if e64.shape != a64.shape:
            return math.inf
        both_nan = np.isnan(e64) & np.isnan(a64)
        same_inf = np.isinf(e64) & (e64 == a64)
        with np.errstate(invalid="ignore"):  # inf - inf: judged below
            diff = np.abs(e64 - a64)
        diff[both_nan | same_inf] = 0.0
        if diff.size:
            worst = max(worst, float(np.nan_to_num(diff, nan=math.inf).max()))
    return worst


def _session(onnx_path: Path) -> Any:
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported model: {one_line(exc)}") from None


def compare(
    model: nn.Module,
    onnx_path: Path,
    input_names: Sequence[str],
    cases: Sequence[Case],
    tolerance: float,
) -> dict[str, float]:
    """The max abs error of each case (by label); :class:`ToleranceExceeded` at the first case
    above ``tolerance``."""
    session = _session(onnx_path)
    errors: dict[str, float] = {}
    for case in cases:
        expected = torch_outputs(model, case.arrays)
        feeds = dict(zip(input_names, case.arrays, strict=True))
        try:
            actual = session.run(None, feeds)
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime fails on the {case.label} input "
                f"(shapes {[list(a.shape) for a in case.arrays]}): {one_line(exc)}"
            ) from None
        error = max_abs_error(expected, actual)
        errors[case.label] = error
        if not error <= tolerance:
            raise ToleranceExceeded(error, tolerance, case.label)
    return errors
