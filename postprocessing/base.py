"""The postprocessing plug-in point: model outputs -> predictions a user reads.

Same pattern as ``preprocessing.base``: a kind is one module with an options model (a
:class:`PostprocessingOptions`) and a factory, bundled as a :class:`PostprocessingKind` and
declared as an entry point in the group ``cidserve.postprocessing``. :func:`create` validates
the metadata's options with the kind's model and builds the postprocessor once per model at
load time (with the labels already resolved); it is called once per request with the run's
outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from registry.kinds import KindTable
from registry.metadata import LabelSource, ModelMetadata, PostprocessingSpec

GROUP = "cidserve.postprocessing"
"""The entry point group of postprocessing kinds."""


class PostprocessingError(ValueError):
    """The model's outputs do not fit the postprocessing spec (a server-side model error)."""


class NonFiniteOutput(PostprocessingError):
    """The model's outputs for this input hold NaN or infinity: the input is outside what the
    model computes in its number range (the caller's to change, not a server fault)."""


@dataclass(frozen=True, slots=True)
class Options:
    """Per-request options that change the answer."""

    top_k: int = 5
    threshold: float = 0.0


@dataclass(slots=True)
class Result:
    """Predictions (``{"class", "confidence", "class_id", ...}`` dicts, best first) and
    kind-specific details (``entropy``, ``confidence``, ``score``, ...)."""

    predictions: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)


class PostprocessingOptions(BaseModel):
    """The base of a kind's options model: strict (an unknown field is an error naming it),
    frozen; ``kind`` and the model ``output`` it reads (None: the first). A kind narrows
    ``kind`` to its name and adds its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    output: str | None = None


class LabelledOptions(PostprocessingOptions, LabelSource):
    """Options of a kind that names classes: ``labels`` inline or a ``labels_cid`` (a JSON
    array or text file, fetched and verified by the loader), not both. The factory receives
    the resolved labels."""


class Postprocessor(Protocol):
    """Turns one run's outputs (by output name; batch of 1) into a :class:`Result`.

    Besides the call, a postprocessor says what it can do, so core code never tests kind
    names: ``classification_output`` is the output whose rows it turns into top classes
    (None when it does not classify). Core code (e.g. the V2 classification extension) then
    calls it with ``{classification_output: row[None]}`` and ``Options(top_k=k)`` and reads
    ``class``, ``confidence`` and ``class_id`` of each prediction.

    Subclassing :class:`PostprocessorBase` gives the default (None); a factory that returns a
    plain function gets it from :func:`create`.
    """

    @property
    def classification_output(self) -> str | None: ...

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result: ...


class PostprocessorBase:
    """Defaults for the capabilities of :class:`Postprocessor`: it does not classify."""

    __slots__ = ()

    classification_output: str | None = None


OptionsT = TypeVar("OptionsT", bound=PostprocessingOptions)


@dataclass(frozen=True, slots=True)
class PostprocessingKind(Generic[OptionsT]):
    """A postprocessing kind: the object its entry point names.

    ``options`` validates the metadata's ``postprocessing`` object; ``factory(metadata,
    options, labels)`` builds the model's postprocessor from the validated options and the
    labels (resolved from ``labels`` / ``labels_cid``, or None)."""

    options: type[OptionsT]
    factory: Callable[[ModelMetadata, OptionsT, list[str] | None], Postprocessor]


PostprocessorFactory = Callable[[ModelMetadata, Any, list[str] | None], Postprocessor]

KINDS: KindTable[PostprocessingKind[Any], PostprocessingSpec] = KindTable(
    "postprocessing", GROUP, PostprocessingKind, PostprocessingSpec
)
"""The postprocessing kinds: entry points of :data:`GROUP`, plus those given to :func:`register`."""


def register(name: str, kind: PostprocessingKind[Any]) -> PostprocessingKind[Any]:
    """Make ``kind`` the postprocessing kind ``name`` in this process (tests, embedding
    applications), over any entry point of that name. Installed plug-ins need not call it."""
    return KINDS.register(name, kind)


def kinds() -> list[str]:
    """The names of the installed postprocessing kinds (loads the plug-ins on first use)."""
    return KINDS.names()


def parse_options(
    spec: PostprocessingSpec | BaseModel | Mapping[str, Any],
) -> PostprocessingOptions:
    """``spec``'s options, validated by its kind's model; ``MetadataError`` naming the field
    (``postprocessing.<field>``; ``postprocessing.kind`` for a kind that is not installed)."""
    _, options = KINDS.parse(spec)
    return options


def validate_options(
    spec: PostprocessingSpec | BaseModel | Mapping[str, Any],
) -> PostprocessingSpec:
    """``spec`` (a spec, an options model or a JSON object) checked by its kind and written
    out in full, defaults filled in: the ``postprocessing`` a publisher puts in metadata."""
    return KINDS.validate(spec)


def create(metadata: ModelMetadata, labels: list[str] | None) -> Postprocessor:
    """The postprocessor for this model; ``labels`` already resolved (inline or by CID)."""
    kind, options = KINDS.parse(metadata.postprocessing)
    return _capable(kind.factory(metadata, options, labels))


class _Capabilities:
    """A postprocessor that lacks the capability attribute, with its default."""

    __slots__ = ("_run", "classification_output")

    def __init__(self, run: Callable[..., Result]) -> None:
        self._run = run
        self.classification_output: str | None = getattr(run, "classification_output", None)

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result:
        return self._run(outputs, context, options)


def _capable(post: Any) -> Postprocessor:
    if hasattr(post, "classification_output"):
        return post  # type: ignore[no-any-return]
    return _Capabilities(post)
