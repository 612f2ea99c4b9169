"""Kind plug-ins: the pre/postprocessing kinds a metadata document may name, found by entry point.

``preprocessing.kind`` and ``postprocessing.kind`` name a *kind*; its implementation is a
plug-in. An installed distribution declares its kinds as Python entry points in the group
``cidserve.preprocessing`` or ``cidserve.postprocessing`` (cidserve's own kinds are declared
the same way, in its ``pyproject.toml``); the entry point's name is the kind's name and its
object is the kind (``preprocessing.PreprocessingKind`` / ``postprocessing.PostprocessingKind``:
an options model and a factory).

:class:`KindTable` is the generic part both packages share: entry points are read and loaded
once per process, on first use; one that cannot be imported, or is not a kind, is logged
once as an error naming it and left out (the other kinds keep working). Kinds can also be
registered in-process (:meth:`KindTable.register`, for tests and embedding applications);
those win over entry points. A spec's options are validated against the kind's options
model, and every problem is a :class:`~registry.metadata.MetadataError` that names the field
(``preprocessing.size``, ``postprocessing.kind``, ...).

This module knows no kind: it sits in the bottom layer, under the packages that define them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from registry.metadata import KindSpec, MetadataError, metadata_error

log = logging.getLogger("cidserve.plugins")

BUILTIN_DISTRIBUTION = "cidserve"
"""The distribution whose kinds win when another one declares a kind of the same name."""


class Kind(Protocol):
    """What a table holds: an object with an options model (and whatever else its package
    needs, e.g. a factory)."""

    @property
    def options(self) -> type[BaseModel]: ...


K = TypeVar("K", bound=Kind)
S = TypeVar("S", bound=KindSpec)


def _dist_name(ep: EntryPoint) -> str:
    dist = ep.dist
    return dist.name if dist is not None else "?"


class KindTable(Generic[K, S]):
    """The kinds of one section (``preprocessing`` or ``postprocessing``)."""

    def __init__(self, section: str, group: str, kind_type: type, spec_type: type[S]) -> None:
        self.section = section
        self.group = group
        self._kind_type = kind_type
        self._spec_type = spec_type
        self._lock = threading.Lock()
        self._found: dict[str, K] | None = None
        self._broken: dict[str, str] = {}
        self._registered: dict[str, K] = {}

    # -- the table -------------------------------------------------------------------------

    def register(self, name: str, kind: K) -> K:
        """Make ``kind`` the one named ``name`` in this process (over any entry point)."""
        if not isinstance(kind, self._kind_type):
            raise TypeError(f"{self.section} kind {name!r} must be a {self._kind_type.__name__}")
        with self._lock:
            self._registered[name] = kind
        return kind

    def unregister(self, name: str) -> None:
        """Forget an in-process registration (entry points stay)."""
        with self._lock:
            self._registered.pop(name, None)

    def reload(self) -> None:
        """Read the entry points again on next use (after installing a plug-in at run time)."""
        with self._lock:
            self._found = None
            self._broken = {}

    def names(self) -> list[str]:
        """The names of the kinds that can be used, sorted."""
        return sorted(self._kinds())

    def get(self, name: str) -> K:
        """The kind named ``name``; a :class:`MetadataError` on ``<section>.kind`` otherwise."""
        kinds = self._kinds()
        try:
            return kinds[name]
        except KeyError:
            pass
        installed = ", ".join(sorted(kinds)) or "none"
        broken = self._broken.get(name)
        why = (
            f"kind {name!r} is installed but failed to load ({broken})"
            if broken
            else f"unknown kind {name!r}"
        )
        raise MetadataError(
            f"invalid metadata: {self.section}.kind: {why}; installed kinds: {installed}",
            f"{self.section}.kind",
        )

    # -- specs -----------------------------------------------------------------------------

    def spec(self, value: S | BaseModel | Mapping[str, Any]) -> S:
        """``value`` (a spec, a kind's options model or a JSON object) as this section's spec;
        only the generic fields are checked here."""
        if isinstance(value, self._spec_type):
            return value
        doc = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        try:
            return self._spec_type.model_validate(doc)
        except ValidationError as exc:
            raise metadata_error(exc, doc, self.section) from None

    def parse(self, value: S | BaseModel | Mapping[str, Any]) -> tuple[K, BaseModel]:
        """The kind ``value`` names and its options, validated strictly by the kind's model."""
        spec = self.spec(value)
        kind = self.get(spec.kind)
        doc = spec.model_dump(mode="json")
        try:
            options = kind.options.model_validate(doc)
        except ValidationError as exc:
            raise metadata_error(exc, doc, self.section) from None
        return kind, options

    def validate(self, value: S | BaseModel | Mapping[str, Any]) -> S:
        """``value`` checked by its kind and written out in full (the kind's defaults filled
        in): what a publisher puts in the metadata document."""
        _, options = self.parse(value)
        return self.spec(options)

    # -- discovery -------------------------------------------------------------------------

    def _kinds(self) -> dict[str, K]:
        found = self._found
        if found is None:
            with self._lock:
                if self._found is None:
                    self._found = self._discover()
                found = self._found
        return {**found, **self._registered}

    def _discover(self) -> dict[str, K]:
        eps = sorted(
            entry_points(group=self.group),
            key=lambda ep: _dist_name(ep) != BUILTIN_DISTRIBUTION,  # cidserve's own first
        )
        found: dict[str, K] = {}
        origin: dict[str, str] = {}
        for ep in eps:
            where = f"{ep.value} from {_dist_name(ep)}"
            if ep.name in origin:
                log.error(
                    "%s plug-in %r (%s) ignored: the kind is already provided by %s",
                    self.group,
                    ep.name,
                    where,
                    origin[ep.name],
                )
                continue
            try:
                kind = ep.load()
            except Exception as exc:  # anything a broken plug-in's import can raise
                self._broken[ep.name] = f"{type(exc).__name__}: {exc}"
                log.error(
                    "%s plug-in %r (%s) cannot be loaded: %s: %s",
                    self.group,
                    ep.name,
                    where,
                    type(exc).__name__,
                    exc,
                )
                continue
            if not isinstance(kind, self._kind_type):
                self._broken[ep.name] = f"not a {self._kind_type.__name__}"
                log.error(
                    "%s plug-in %r (%s) is a %s, not a %s; ignored",
                    self.group,
                    ep.name,
                    where,
                    type(kind).__name__,
                    self._kind_type.__name__,
                )
                continue
            found[ep.name] = kind
            origin[ep.name] = where
        return found
