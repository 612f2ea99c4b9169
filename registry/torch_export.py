"""Export a user's PyTorch model to ONNX, verified against torch.

:func:`export_torch` takes a state-dict checkpoint and its architecture
(:mod:`registry.torch_source`), or a TorchScript file, and writes an ONNX file whose every
input and output has a dynamic batch axis (axis 0). Before the file appears at its
destination the graph passes ``onnx.checker.check_model(full_check=True)`` and ONNX Runtime's
outputs are compared with torch's (:mod:`registry.export_verify`): the largest absolute
difference must not exceed the tolerance.

The result (:class:`TorchExport`) says what was measured; :meth:`TorchExport.tools` is what
goes into the published metadata's ``tools`` (``export.torch``, ``export.onnx``,
``export.onnxruntime``, ``export.max_abs_error``, ...). The same entries are written into the
ONNX file's ``metadata_props`` (as ``cidserve.export.*``), so publishing the file later
carries them (:func:`read_export_tools`).

Inputs are float32. Names: ``input`` for one input, ``input_0``, ``input_1``, ... for several
(``output`` / ``output_N`` alike) unless given.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from registry.export import OPSET, ExportError, StepCallback, _require, _version
from registry.export_verify import compare, load_sample, torch_outputs, verification_inputs
from registry.files import AtomicFile, sha256_file
from registry.torch_source import (
    fit_state_dict,
    is_torchscript,
    load_architecture,
    load_state_dict,
    load_torchscript,
    one_line,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_TOLERANCE",
    "TORCH_EXPORT_STEPS",
    "TorchExport",
    "export_torch",
    "parse_shape",
    "read_export_tools",
]

DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference allowed between ONNX Runtime's and torch's outputs."""
MIN_OPSET, MAX_OPSET = 9, 21
MAX_RANK = 8
PROP_PREFIX = "cidserve."
MAX_PROPS = 16
MAX_PROP_CHARS = 256

TORCH_EXPORT_STEPS = (
    "loading the model",
    "exporting to ONNX",
    "checking the ONNX graph",
    "comparing with ONNX Runtime",
)


def _tell(progress: StepCallback | None, step: str) -> None:
    if progress is not None:
        progress(step, TORCH_EXPORT_STEPS.index(step) + 1, len(TORCH_EXPORT_STEPS))


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``: 1 to 8 positive sizes, the first the batch."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a shape like 1,3,224,224") from None
    if not 1 <= len(shape) <= MAX_RANK or any(d < 1 for d in shape):
        raise ValueError(f"{text!r}: a shape is 1 to {MAX_RANK} positive sizes")
    return shape


@dataclass(frozen=True)
class TorchExport:
    """A verified export: the file, its tensors, and what the comparison measured.

    ``errors`` maps each verification case (``random``, ``random batch+2``, ``sample``) to
    its max abs error; ``max_abs_error`` is the largest of them.
    """

    path: Path
    source: str
    source_sha256: str
    arch: str | None
    input_names: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_names: tuple[str, ...]
    opset: int
    tolerance: float
    max_abs_error: float
    errors: dict[str, float] = field(hash=False)
    versions: dict[str, str] = field(hash=False)
    seconds: float
    size_bytes: int
    sha256: str

    def tools(self) -> dict[str, str]:
        """The entries for the metadata's ``tools``."""
        doc = {f"export.{k}": v for k, v in self.versions.items()}
        doc.update(
            {
                "export.max_abs_error": f"{self.max_abs_error:.3g}",
                "export.tolerance": f"{self.tolerance:g}",
                "export.source_sha256": self.source_sha256,
            }
        )
        return doc


def _names(given: Sequence[str] | None, count: int, stem: str, what: str) -> tuple[str, ...]:
    if not given:
        return (stem,) if count == 1 else tuple(f"{stem}_{i}" for i in range(count))
    if len(given) != count:
        raise ExportError(f"{len(given)} {what} name(s) given for {count} {what}(s)")
    if len(set(given)) != len(given) or not all(n.strip() for n in given):
        raise ExportError(f"{what} names must be distinct and not empty")
    return tuple(given)


def _load_model(source: Path, arch: str | None) -> nn.Module:
    if not source.is_file():
        raise ExportError(f"{source}: no such file")
    if is_torchscript(source):
        if arch:
            raise ExportError(f"{source} is a TorchScript file: it needs no --arch")
        return load_torchscript(source)
    if not arch:
        raise ExportError(
            f"{source} is a state-dict checkpoint: name its architecture with "
            "--arch FILE.py:CALLABLE or package.module:CALLABLE"
        )
    state = load_state_dict(source)
    model = load_architecture(arch)
    fit_state_dict(model, state, source.name)
    return model.eval()


def _to_onnx(
    model: nn.Module,
    example: Sequence[object],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
) -> None:
    torch = _require("torch")
    axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is chosen on purpose (dynamo=False).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message=".*no signature found for")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        try:
            torch.onnx.export(
                model,
                tuple(example),
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {one_line(exc)}") from None


def _check(path: Path) -> None:
    onnx = _require("onnx")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {one_line(exc)}") from None


def _write_props(path: Path, entries: dict[str, str]) -> None:
    onnx = _require("onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if not p.key.startswith(PROP_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        model.metadata_props.add(key=PROP_PREFIX + key, value=value)
    onnx.save(model, str(path))


def read_export_tools(path: Path) -> dict[str, str]:
    """The ``export.*`` entries an export wrote into the ONNX file at ``path`` (bounded: at most
    16, each value at most 256 characters); empty when there are none or the file is not
    ONNX (publishing reports that)."""
    onnx = _require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return {}
    tools: dict[str, str] = {}
    for prop in model.metadata_props:
        key = prop.key.removeprefix(PROP_PREFIX)
        if prop.key.startswith(PROP_PREFIX + "export.") and len(tools) < MAX_PROPS:
            tools[key[:64]] = prop.value[:MAX_PROP_CHARS]
    return tools


def export_torch(
    source: Path,
    output: Path,
    *,
    input_shapes: Sequence[tuple[int, ...]],
    arch: str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = OPSET,
    samples: Sequence[Path] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    progress: StepCallback | None = None,
) -> TorchExport:
    """Export the model in ``source`` to ``output``, verified; :class:`ExportError` otherwise.

    ``source`` is a state-dict checkpoint (``arch`` names the architecture) or a TorchScript
    file. ``input_shapes`` has one float32 shape per input (the first size is the batch the
    model is traced with); ``samples`` one ``.npy`` file per input, or none. Nothing is
    written at ``output`` unless every check passes. ``progress`` is told each of
    :data:`TORCH_EXPORT_STEPS` as it starts.
    """
    started = time.perf_counter()
    _tell(progress, "loading the model")
    torch = _require("torch")
    source, output = Path(source), Path(output)
    if not input_shapes:
        raise ExportError("give each input's shape with --input-shape, e.g. 1,3,224,224")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: choose {MIN_OPSET} to {MAX_OPSET}")
    if not tolerance >= 0:
        raise ExportError(f"--tolerance {tolerance}: must be 0 or more")
    if samples and len(samples) != len(input_shapes):
        raise ExportError(f"{len(samples)} --sample file(s) for {len(input_shapes)} input(s)")
    names = _names(input_names, len(input_shapes), "input", "input")
    sample_arrays = [
        load_sample(Path(p), shape) for p, shape in zip(samples, input_shapes, strict=False)
    ]

    model = _load_model(source, arch)
    cases = verification_inputs(input_shapes, seed, sample_arrays)
    outputs = torch_outputs(model, cases[0].arrays)
    out_names = _names(output_names, len(outputs), "output", "output")

    output.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(output.parent, f".{output.name}.", ".tmp") as atomic:
        atomic.file.close()  # the exporter writes the file by its path
        _tell(progress, "exporting to ONNX")
        example = [torch.from_numpy(a) for a in cases[0].arrays]
        _to_onnx(model, example, atomic.path, names, out_names, opset)
        _tell(progress, "checking the ONNX graph")
        _check(atomic.path)
        _tell(progress, "comparing with ONNX Runtime")
        errors = compare(model, atomic.path, names, cases, tolerance)
        versions = {
            "torch": torch.__version__,
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"),
        }
        result = TorchExport(
            path=output,
            source=source.name,
            source_sha256=sha256_file(source),
            arch=arch,
            input_names=names,
            input_shapes=tuple(tuple(s) for s in input_shapes),
            output_names=out_names,
            opset=opset,
            tolerance=tolerance,
            max_abs_error=max(errors.values()),
            errors=errors,
            versions=versions,
            seconds=0.0,
            size_bytes=0,
            sha256="",
        )
        _write_props(atomic.path, result.tools())
        atomic.commit(output, fsync=True)
    return replace(
        result,
        seconds=time.perf_counter() - started,
        size_bytes=output.stat().st_size,
        sha256=sha256_file(output),
    )
