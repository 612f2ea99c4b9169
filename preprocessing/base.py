"""The preprocessing plug-in point: request payload -> model input tensors.

A *kind* (``image``, ``tensor``, ``tabular``, ...) is one module that defines an options model
(a :class:`PreprocessingOptions`) and a factory, bundled as a :class:`PreprocessingKind` and
declared as an entry point in the group ``cidserve.preprocessing`` of its distribution
(cidserve's own kinds included). :func:`create` finds the kind named by the metadata, validates
its options strictly and calls the factory once per model at load; the returned
:class:`Preprocessor` is kept with the session and called once per request, in a worker
thread (it may block on CPU; it must not touch the event loop).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from registry.kinds import KindTable
from registry.metadata import ModelMetadata, PreprocessingSpec

GROUP = "cidserve.preprocessing"
"""The entry point group of preprocessing kinds."""


class PreprocessingError(ValueError):
    """The request's input cannot be turned into the model's input (a client error, 400)."""


class InputTooLarge(PreprocessingError):
    """The input is larger than the server allows (413)."""


@dataclass(frozen=True, slots=True)
class ImagePayload:
    """Encoded image bytes (JPEG, PNG, WebP, ... anything Pillow decodes)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TensorPayload:
    """A tensor sent by the client, already parsed into an array (not yet checked)."""

    array: np.ndarray
    input: str | None = None


@dataclass(frozen=True, slots=True)
class TensorsPayload:
    """Tensors sent by the client for several model inputs, by input name (not yet checked)."""

    tensors: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class FeaturesPayload:
    """Named scalar features (tabular models)."""

    values: dict[str, float]


Payload = ImagePayload | TensorPayload | TensorsPayload | FeaturesPayload


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on untrusted input, from settings."""

    max_image_pixels: int = 40_000_000
    max_tensor_elements: int = 50_000_000
    # Bytes one image may take decoded and converted (Pillow holds 8-bit colour in 4 bytes a
    # pixel; 16-bit grey in 2, plus its 8-bit conversion): a 40 MP RGB image fits.
    max_image_bytes: int = 160 << 20


@dataclass(slots=True)
class Prepared:
    """What a preprocessor hands to the runtime: feeds by input name, plus context for
    postprocessing (e.g. the original image size and letterbox transform for detection)."""

    feeds: dict[str, np.ndarray]
    context: dict[str, Any] = field(default_factory=dict)


class PreprocessingOptions(BaseModel):
    """The base of a kind's options model: strict (an unknown field is an error naming it),
    frozen; ``kind`` and the model ``input`` it feeds (None: the first). A kind narrows
    ``kind`` to its name (``kind: Literal["image"] = "image"``) and adds its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    input: str | None = None


class Preprocessor(Protocol):
    """Turns one request payload into model feeds. Called from a worker thread.

    Besides the call, a preprocessor says what it can do, so core code never tests kind
    names:

    * ``image_input``: the model input that encoded image bytes (:class:`ImagePayload`, a
      ``BYTES`` tensor of the V2 protocol) feed, or None when it takes no images;
    * ``warmup_shapes()``: concrete shapes of the inputs it feeds, for the zero-filled
      warm-up run at load (e.g. ``{"x": [1, 3, 224, 224]}``); ``{}`` lets the runtime use 1
      for every dynamic dimension.

    Subclassing :class:`PreprocessorBase` gives both (no images, no shapes); a factory that
    returns a plain function gets them from :func:`create`.
    """

    @property
    def image_input(self) -> str | None: ...

    def warmup_shapes(self) -> dict[str, list[int]]: ...

    def __call__(self, payload: Payload) -> Prepared: ...


class PreprocessorBase:
    """Defaults for the capabilities of :class:`Preprocessor`: no images, no shapes."""

    __slots__ = ()

    image_input: str | None = None

    def warmup_shapes(self) -> dict[str, list[int]]:
        """Nothing concrete: every dynamic dimension of the warm-up input is 1."""
        return {}


OptionsT = TypeVar("OptionsT", bound=PreprocessingOptions)


@dataclass(frozen=True, slots=True)
class PreprocessingKind(Generic[OptionsT]):
    """A preprocessing kind: the object its entry point names.

    ``options`` validates the metadata's ``preprocessing`` object (kind, input and the
    kind's fields); ``factory(metadata, options, limits)`` builds the model's preprocessor
    from the validated options (raise ``MetadataError`` naming the field for metadata it
    cannot serve)."""

    options: type[OptionsT]
    factory: Callable[[ModelMetadata, OptionsT, Limits], Preprocessor]


PreprocessorFactory = Callable[[ModelMetadata, Any, Limits], Preprocessor]

KINDS: KindTable[PreprocessingKind[Any], PreprocessingSpec] = KindTable(
    "preprocessing", GROUP, PreprocessingKind, PreprocessingSpec
)
"""The preprocessing kinds: entry points of :data:`GROUP`, plus those given to :func:`register`."""


def register(name: str, kind: PreprocessingKind[Any]) -> PreprocessingKind[Any]:
    """Make ``kind`` the preprocessing kind ``name`` in this process (tests, embedding
    applications), over any entry point of that name. Installed plug-ins need not call it."""
    return KINDS.register(name, kind)


def kinds() -> list[str]:
    """The names of the installed preprocessing kinds (loads the plug-ins on first use)."""
    return KINDS.names()


def parse_options(spec: PreprocessingSpec | BaseModel | Mapping[str, Any]) -> PreprocessingOptions:
    """``spec``'s options, validated by its kind's model; ``MetadataError`` naming the field
    (``preprocessing.<field>``; ``preprocessing.kind`` for a kind that is not installed)."""
    _, options = KINDS.parse(spec)
    return options


def validate_options(spec: PreprocessingSpec | BaseModel | Mapping[str, Any]) -> PreprocessingSpec:
    """``spec`` (a spec, an options model or a JSON object) checked by its kind and written
    out in full, defaults filled in: the ``preprocessing`` a publisher puts in metadata."""
    return KINDS.validate(spec)


def create(metadata: ModelMetadata, limits: Limits) -> Preprocessor:
    """The preprocessor for this model, by its metadata's ``preprocessing.kind``."""
    kind, options = KINDS.parse(metadata.preprocessing)
    return _capable(kind.factory(metadata, options, limits))


class _Capabilities:
    """A preprocessor that lacks the capability attributes, with their defaults."""

    __slots__ = ("_run", "_shapes", "image_input")

    def __init__(self, run: Callable[[Payload], Prepared]) -> None:
        self._run = run
        self.image_input: str | None = getattr(run, "image_input", None)
        self._shapes: Callable[[], dict[str, list[int]]] | None = getattr(
            run, "warmup_shapes", None
        )

    def __call__(self, payload: Payload) -> Prepared:
        return self._run(payload)

    def warmup_shapes(self) -> dict[str, list[int]]:
        return self._shapes() if self._shapes is not None else {}


def _capable(pre: Any) -> Preprocessor:
    if hasattr(pre, "image_input") and callable(getattr(pre, "warmup_shapes", None)):
        return pre  # type: ignore[no-any-return]
    return _Capabilities(pre)
