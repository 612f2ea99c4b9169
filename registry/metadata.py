"""The versioned schema of ``metadata.json``: what a published model says about itself.

A model is published as three pieces of content in a content store: the ONNX file, an optional
labels file, and this metadata document, which names the other two by CID. The metadata CID is
what users load (``POST /api/models/load {metadataCid}``).

Everything in here is untrusted input when it comes back from a store: :func:`parse_metadata`
bounds the size, parses strictly (unknown fields are rejected) and raises
:class:`MetadataError` with a message that names the offending field.

``preprocessing`` and ``postprocessing`` are open specs (:class:`PreprocessingSpec`,
:class:`PostprocessingSpec`): ``kind`` names a kind, a plug-in above this layer
(``preprocessing`` / ``postprocessing`` packages, found by entry point through
:mod:`registry.kinds`), and the kind's options are kept as given; the kind validates them,
just as strictly, when the model is loaded or published. Here only the fields that core code
reads for every kind are checked (``kind``, ``input``, ``output``, ``labels``,
``labels_cid``). Serialization is canonical (:meth:`ModelMetadata.to_json_bytes`), so the same
document always has the same CID.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

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


def check_cid(value: str) -> str:
    """``value`` if it is a CID (v0 or base32 v1); ValueError otherwise."""
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

    _cid = field_validator("cid")(check_cid)


Label = Annotated[str, Field(max_length=512)]
Labels = Annotated[list[Label], Field(max_length=MAX_LABELS)]
"""Class labels given inline (``postprocessing.labels``)."""

_KIND_RE = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class LabelSource(BaseModel):
    """Where a kind's class labels come from: ``labels`` inline or a ``labels_cid`` (a JSON
    array or text file, fetched and verified by the loader), not both."""

    labels: Labels | None = None
    labels_cid: str | None = None

    @field_validator("labels_cid")
    @classmethod
    def _labels_cid(cls, v: str | None) -> str | None:
        return None if v is None else check_cid(v)

    @model_validator(mode="after")
    def _one_label_source(self) -> Self:
        if self.labels is not None and self.labels_cid is not None:
            raise ValueError("give labels inline or by labels_cid, not both")
        return self


class KindSpec(BaseModel):
    """A kind's spec: ``kind`` plus that kind's options, kept as given (``extra="allow"``).

    The options are the plug-in's business: it validates them strictly when the model is
    loaded (``preprocessing.create`` / ``postprocessing.create``) or published
    (``validate_options``). Here only the fields core reads generically are checked.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(pattern=_KIND_RE)

    @model_validator(mode="before")
    @classmethod
    def _from_options(cls, data: Any) -> Any:
        # A kind's options model (or another spec) stands for its JSON document.
        if isinstance(data, BaseModel) and not isinstance(data, cls):
            return data.model_dump(mode="json")
        return data


class PreprocessingSpec(KindSpec):
    """``preprocessing``: ``kind``, the model input it feeds (``input``; None: the first) and
    the kind's options. ``input`` is always written, as every built-in kind declares it."""

    input: str | None = None


class PostprocessingSpec(LabelSource, KindSpec):
    """``postprocessing``: ``kind``, the output it reads (``output``; None: the first), the
    labels when the kind takes them (inline ``labels`` or by ``labels_cid``; written only when
    given, since kinds without labels refuse these fields) and the kind's options."""

    output: str | None = None

    @model_serializer(mode="wrap")
    def _written_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        doc: dict[str, Any] = handler(self)
        for name in ("labels", "labels_cid"):
            if name not in self.model_fields_set:
                doc.pop(name, None)
        return doc


Preprocessing = PreprocessingSpec
"""The ``preprocessing`` field's type (an open spec; kinds are plug-ins)."""
Postprocessing = PostprocessingSpec
"""The ``postprocessing`` field's type (an open spec; kinds are plug-ins)."""


class ModelMetadata(_Strict):
    """``metadata.json``, schema ``cidserve.metadata/v1``."""

    schema_version: Literal["cidserve.metadata/v1"] = SCHEMA_VERSION
    name: str
    version: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=4096)
    model: ModelFile
    inputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    preprocessing: PreprocessingSpec
    postprocessing: PostprocessingSpec
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


def _field_path(loc: tuple[int | str, ...], doc: Any) -> str:
    """The dotted path of an error location, as the document spells it: validator frames and
    the tags pydantic adds for a discriminated union (a value of the object, not a key) are
    dropped, so ``normalize.mean_std.std`` reads ``normalize.std``."""
    parts: list[str] = []
    node: Any = doc
    for i, part in enumerate(loc):
        if str(part).startswith("function-"):
            continue
        if isinstance(node, dict):
            if part in node:
                node = node[part]
            elif i < len(loc) - 1 and part in {v for v in node.values() if isinstance(v, str)}:
                continue
            else:
                node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        parts.append(str(part))
    return ".".join(parts)


def metadata_error(exc: ValidationError, doc: Any, prefix: str = "") -> MetadataError:
    """The :class:`MetadataError` for the first error of validating ``doc``; its ``field`` is
    the dotted path of the bad field under ``prefix`` (e.g. ``preprocessing.size``)."""
    errors = exc.errors()
    err = errors[0]
    field = ".".join(p for p in (prefix, _field_path(tuple(err["loc"]), doc)) if p)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
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
        raise metadata_error(exc, doc) from None


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
