"""Publishing: an ONNX file (+ labels) -> content store, with a metadata document naming both.

:func:`publish_model` checks the model with ``onnx.checker``, reads its inputs and outputs,
stores model, labels and ``metadata.json`` and returns the metadata CID, which is what users
load. The same file gives the same CIDs in every store (they are computed as ``ipfs add
--cid-version=1`` computes them).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from registry.files import sha256_file
from registry.identity import model_id_for
from registry.metadata import (
    ModelFile,
    ModelMetadata,
    PostprocessingSpec,
    PreprocessingSpec,
    TensorSpec,
    now_utc,
    parse_labels,
)
from registry.presets import preset_preprocessing
from registry.store import ContentStore

TASKS = ("classification", "detection", "score", "tensor")

StepCallback = Callable[[str, int, int], None]
"""``(description, index, total)``: told when step ``index`` (1-based) of ``total`` starts (a
progress bar)."""

PUBLISH_STEPS = (
    "checking the model",
    "storing the labels",
    "storing the model",
    "storing the metadata",
)

SpecLike = PreprocessingSpec | PostprocessingSpec | BaseModel | Mapping[str, Any]
"""A ``preprocessing`` / ``postprocessing`` given to :func:`publish_model`: a spec, a kind's
options model or a JSON object. It is written as given: run it through the package's
``validate_options`` first (``preprocessing.validate_options``,
``postprocessing.validate_options``) to have its kind check it and fill in its defaults."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    metadata_cid: str
    model_cid: str
    labels_cid: str | None
    model_id: str
    metadata: ModelMetadata

    def to_json(self) -> dict[str, Any]:
        return {
            "metadataCid": self.metadata_cid,
            "modelCid": self.model_cid,
            "labelsCid": self.labels_cid,
            "model_id": self.model_id,
            "name": self.metadata.name,
            "version": self.metadata.version,
        }


@dataclass(frozen=True, slots=True)
class OnnxInfo:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    size: int
    sha256: str
    producer: str


def _tool_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def inspect_onnx(path: Path) -> OnnxInfo:
    """Check the model with ``onnx.checker`` and read its signature (blocking)."""
    import onnx
    from onnx import helper

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"{path} is not a valid ONNX model: {exc}") from None
    except Exception as exc:  # protobuf decode errors and the like
        raise ValueError(f"{path} cannot be read as an ONNX model: {exc}") from None
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        ttype = value.type.tensor_type
        if ttype.elem_type == onnx.TensorProto.STRING:
            dtype = "string"
        else:
            dtype = str(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        dims: list[int | str | None] = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return TensorSpec(name=value.name, dtype=dtype, shape=dims)  # type: ignore[arg-type]

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not opset:
        opset = max((o.version for o in model.opset_import), default=1)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return OnnxInfo(
        inputs=[spec(v) for v in graph.input if v.name not in initializers],
        outputs=[spec(v) for v in graph.output],
        opset=int(opset),
        size=path.stat().st_size,
        sha256=sha256_file(path),
        producer=producer,
    )


def default_postprocessing(
    task: str, labels_cid: str | None, output: TensorSpec
) -> PostprocessingSpec:
    """The ``postprocessing`` of ``task`` for ``output``, every option of the kind written out
    (the kind's defaults), so the document does not depend on who fills them in."""
    if task == "classification":
        doc: dict[str, Any] = {"labels": None, "labels_cid": labels_cid, "softmax": True}
    elif task == "detection":
        doc = {
            "labels": None,
            "labels_cid": labels_cid,
            "format": "yolov8",
            "score_threshold": 0.25,
            "iou_threshold": 0.45,
            "max_detections": 100,
        }
    elif task == "score":
        doc = {"label": "score", "sigmoid": False, "clamp": False}
    elif task == "tensor":  # every output, as tensors
        doc = {"outputs": None, "max_elements": 1_000_000, "max_text_chars": 16 << 20}
        return PostprocessingSpec.model_validate({"kind": task, "output": None, **doc})
    else:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return PostprocessingSpec.model_validate({"kind": task, "output": output.name, **doc})


async def publish_model(
    store: ContentStore,
    model_path: Path,
    *,
    name: str | None = None,
    version_: str = "1.0.0",
    description: str = "",
    labels_path: Path | None = None,
    labels: list[str] | None = None,
    preset: str = "none",
    task: str = "classification",
    preprocessing: SpecLike | None = None,
    postprocessing: SpecLike | None = None,
    cache_predictions: bool = True,
    tools: dict[str, str] | None = None,
    progress: StepCallback | None = None,
) -> PublishResult:
    """Store the model, its labels and its metadata; return the CIDs.

    ``preprocessing``/``postprocessing`` given explicitly win over ``preset``/``task``; they
    are written as given (see :data:`SpecLike`). ``progress`` is told each of
    :data:`PUBLISH_STEPS` as it starts (the labels' step also without labels).
    """

    def tell(step: str) -> None:
        if progress is not None:
            progress(step, PUBLISH_STEPS.index(step) + 1, len(PUBLISH_STEPS))

    tell("checking the model")
    info = await asyncio.to_thread(inspect_onnx, model_path)
    tell("storing the labels")
    if labels_path is not None:
        labels = parse_labels(await asyncio.to_thread(labels_path.read_bytes))
    labels_cid = None
    if labels is not None:
        labels_cid = await store.put_bytes(json.dumps(labels, ensure_ascii=False).encode())
    tell("storing the model")
    model_cid = await store.put_file(model_path)
    if preprocessing is None and preset == "none" and len(info.inputs) > 1:
        pre = PreprocessingSpec(kind="tensor", input=None)  # a tensor for every input
    else:
        pre = preprocessing or preset_preprocessing(preset, info.inputs[0])
    post = postprocessing or default_postprocessing(task, labels_cid, info.outputs[0])
    tool_versions = {
        k: v
        for k, v in {
            "cidserve": _tool_version("cidserve"),
            "onnx": _tool_version("onnx"),
            "onnxruntime": _tool_version("onnxruntime"),
            "producer": info.producer or None,
        }.items()
        if v
    }
    tool_versions.update(tools or {})
    metadata = ModelMetadata(
        name=name or model_path.stem,
        version=version_,
        description=description,
        model=ModelFile(cid=model_cid, size=info.size, sha256=info.sha256, opset=info.opset),
        inputs=info.inputs,
        outputs=info.outputs,
        preprocessing=pre,
        postprocessing=post,
        cache_predictions=cache_predictions,
        created_at=now_utc(),
        tools=tool_versions,
    )
    tell("storing the metadata")
    metadata_cid = await store.put_bytes(metadata.to_json_bytes())
    return PublishResult(
        metadata_cid=metadata_cid,
        model_cid=model_cid,
        labels_cid=labels_cid,
        model_id=model_id_for(metadata.name, metadata_cid),
        metadata=metadata,
    )
