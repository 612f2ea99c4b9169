"""The versioned schema of ``metadata.json``: what a published model says about itself.

A model is published as three pieces of content in a content store: the ONNX file, an optional
labels file, and this metadata document, which names the other two by CID. The metadata CID is
what users load (``POST /api/models/load {metadataCid}``).

Everything in here is untrusted input when it comes back from a store: :func:`parse_metadata`
bounds the size, parses strictly (unknown fields are rejected) and raises
:class:`MetadataError` with a message that names the offending field.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = "cidserve.metadata/v1"
MAX_METADATA_BYTES = 1 << 20
MAX_LABELS = 100_000

DType = Literal[
    "float32",
    "float16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
]
NUMERIC_DTYPES: tuple[str, ...] = tuple(d for d in get_args(DType) if d != "string")
"""The dtypes a request may send as a tensor (every declared dtype but ``string``)."""
Dim = Annotated[int, Field(ge=0)] | str | None
"""A dimension: a fixed size, or a symbolic name / ``None`` for a dynamic one."""

_CID_RE = re.compile(r"^(Qm[1-9A-HJ-NP-Za-km-z]{44}|b[a-z2-7]{50,100})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class MetadataError(ValueError):
    """Metadata that cannot be used; ``field`` is the dotted path of the first bad field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_cid(value: str) -> str:
    if not _CID_RE.match(value):
        raise ValueError(f"not a CID: {value[:80]!r}")
    return value


class TensorSpec(_Strict):
    """One model input or output as the ONNX graph declares it."""

    name: str = Field(min_length=1, max_length=256)
    dtype: DType
    shape: list[Dim] = Field(max_length=16)

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)


class ModelFile(_Strict):
    """The model content: its CID, size and SHA-256 (checked again after every fetch)."""

    cid: str
    size: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: Literal["onnx"] = "onnx"
    opset: int = Field(ge=1, le=100)

    _cid = field_validator("cid")(_check_cid)


class MeanStd(_Strict):
    """``(pixel / 255 - mean) / std`` per channel, channels in the model's channel order."""

    type: Literal["mean_std"] = "mean_std"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


class ScaleOffset(_Strict):
    """``pixel * scale + offset`` on 0..255 pixels (e.g. ``(x - 127) / 128``)."""

    type: Literal["scale_offset"] = "scale_offset"
    scale: float
    offset: float = 0.0


Normalization = Annotated[MeanStd | ScaleOffset, Field(discriminator="type")]


class ImagePreprocessing(_Strict):
    """Decode an image and make the model's input tensor from it.

    ``resize_mode``:
    * ``shorter_side``: scale so the shorter side is ``min(size) / crop_ratio``, then center-crop
      ``size`` (the usual ImageNet evaluation transform: 256 -> 224 is ``crop_ratio=0.875``);
    * ``stretch``: resize straight to ``size``, ignoring the aspect ratio;
    * ``letterbox``: scale to fit inside ``size`` keeping the aspect ratio and pad with
      ``pad_value`` (YOLO-style detectors; boxes are mapped back to the original image).
    """

    kind: Literal["image"] = "image"
    input: str | None = None
    size: tuple[Annotated[int, Field(ge=1, le=8192)], Annotated[int, Field(ge=1, le=8192)]]
    resize_mode: Literal["shorter_side", "stretch", "letterbox"] = "shorter_side"
    crop_ratio: float = Field(1.0, gt=0.0, le=1.0)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    normalize: Normalization | None = None
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = Field(114, ge=0, le=255)


class TensorPreprocessing(_Strict):
    """The request carries the tensor itself; it is checked against the input's dtype/shape."""

    kind: Literal["tensor"] = "tensor"
    input: str | None = None


class Feature(_Strict):
    """One named feature of a tabular model: ``(value - offset) / scale``."""

    name: str = Field(min_length=1, max_length=128)
    offset: float = 0.0
    scale: float = 1.0
    default: float | None = None
    min: float | None = None
    max: float | None = None

    @field_validator("scale")
    @classmethod
    def _scale_nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v


class TabularPreprocessing(_Strict):
    """Named features (a JSON object) to one row vector, in the order given here."""

    kind: Literal["tabular"] = "tabular"
    input: str | None = None
    features: list[Feature] = Field(min_length=1, max_length=10_000)

    @field_validator("features")
    @classmethod
    def _unique(cls, v: list[Feature]) -> list[Feature]:
        names = [f.name for f in v]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return v


Preprocessing = Annotated[
    ImagePreprocessing | TensorPreprocessing | TabularPreprocessing, Field(discriminator="kind")
]


class _Labelled(_Strict):
    labels: list[Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=MAX_LABELS)
    labels_cid: str | None = None

    @field_validator("labels_cid")
    @classmethod
    def _labels_cid(cls, v: str | None) -> str | None:
        return None if v is None else _check_cid(v)

    @model_validator(mode="after")
    def _one_label_source(self) -> _Labelled:
        if self.labels is not None and self.labels_cid is not None:
            raise ValueError("give labels inline or by labels_cid, not both")
        return self


class ClassificationPostprocessing(_Labelled):
    """Class scores to the top-k labels, with confidence and entropy."""

    kind: Literal["classification"] = "classification"
    output: str | None = None
    softmax: bool = True


class DetectionPostprocessing(_Labelled):
    """Raw detector output to boxes, scores and classes, with non-maximum suppression.

    ``format="yolov8"``: one output ``[1, 4 + classes, anchors]`` with ``cx, cy, w, h`` in
    input pixels followed by per-class scores.
    """

    kind: Literal["detection"] = "detection"
    output: str | None = None
    format: Literal["yolov8"] = "yolov8"
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1, le=10_000)


class ScorePostprocessing(_Strict):
    """One number per request (e.g. a compatibility score), optionally squashed or clamped."""

    kind: Literal["score"] = "score"
    output: str | None = None
    label: str = Field("score", max_length=128)
    sigmoid: bool = False
    clamp: bool = False


Postprocessing = Annotated[
    ClassificationPostprocessing | DetectionPostprocessing | ScorePostprocessing,
    Field(discriminator="kind"),
]


class ModelMetadata(_Strict):
    """``metadata.json``, schema ``cidserve.metadata/v1``."""

    schema_version: Literal["cidserve.metadata/v1"] = SCHEMA_VERSION
    name: str
    version: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=4096)
    model: ModelFile
    inputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    preprocessing: Preprocessing
    postprocessing: Postprocessing
    cache_predictions: bool = True
    created_at: datetime
    tools: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                "name must be 1-100 characters of letters, digits, '.', '_' or '-' "
                "and start with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _io_references(self) -> ModelMetadata:
        input_names = {t.name for t in self.inputs}
        output_names = {t.name for t in self.outputs}
        pre_input = self.preprocessing.input
        if pre_input is not None and pre_input not in input_names:
            raise ValueError(f"preprocessing.input {pre_input!r} is not one of the model inputs")
        post_output = self.postprocessing.output
        if post_output is not None and post_output not in output_names:
            raise ValueError(f"postprocessing.output {post_output!r} is not one of the outputs")
        return self

    def input_spec(self, name: str | None = None) -> TensorSpec:
        """The named input, or the first one."""
        if name is None:
            return self.inputs[0]
        return next(t for t in self.inputs if t.name == name)

    def output_spec(self, name: str | None = None) -> TensorSpec:
        """The named output, or the first one."""
        if name is None:
            return self.outputs[0]
        return next(t for t in self.outputs if t.name == name)

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, compact) so the same metadata has the same CID."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()


def now_utc() -> datetime:
    """The timestamp publishers put in ``created_at`` (UTC, whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def _first_error(exc: ValidationError) -> MetadataError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    # Discriminated unions put the chosen tag into the location; drop it for readability.
    field = re.sub(
        r"\.(image|tensor|tabular|classification|detection|score|mean_std|scale_offset)"
        r"(?=\.|$)",
        "",
        field,
    )
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return MetadataError(f"invalid metadata: {field or '(root)'}: {err['msg']}{more}", field)


def parse_metadata(raw: bytes, max_bytes: int = MAX_METADATA_BYTES) -> ModelMetadata:
    """Parse and validate untrusted ``metadata.json`` bytes."""
    if len(raw) > max_bytes:
        raise MetadataError(f"metadata is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MetadataError("metadata must be a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MetadataError(
            f"invalid metadata: schema_version: unsupported {version!r}; "
            f"this server reads {SCHEMA_VERSION!r}",
            "schema_version",
        )
    try:
        return ModelMetadata.model_validate(doc)
    except ValidationError as exc:
        raise _first_error(exc) from None


def parse_labels(raw: bytes, max_labels: int = MAX_LABELS) -> list[str]:
    """Parse an untrusted labels file: a JSON array of strings, or plain text, one per line."""
    text = raw.decode("utf-8", errors="strict") if raw else ""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"labels file is not valid JSON: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise MetadataError("labels file must be a JSON array of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise MetadataError("labels file is empty")
    if len(labels) > max_labels:
        raise MetadataError(f"labels file has {len(labels)} labels; the limit is {max_labels}")
    return labels
