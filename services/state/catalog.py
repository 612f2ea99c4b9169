"""The catalogue: the operator's record of published names, their versions and labels.

For each model name, ``version -> metadata CID`` (with when it was recorded) and
``label -> version``. The operator writes it (``cidserve publish`` records each publish,
``cidserve label`` moves a label); the server reads it to resolve references:

* ``NAME@latest``: the newest version (see :func:`version_key`);
* ``NAME@VERSION``: that version;
* ``NAME@LABEL``: the version the label points at.

Two implementations of :class:`Catalog`: :class:`FileCatalog`, one JSON file under the data
directory (replaced whole and atomically on each write, under a lock file so concurrent
writers do not lose each other's entries; read again when it changes), and
:class:`RedisCatalog`, under the Redis store's prefix, which every replica shares.

Versions are ordered by number when they are dotted integers (``1.0.10`` > ``1.0.9``,
``7`` > ``6``); any other version ranks below the numbered ones, by when it was recorded.
:func:`next_version` is the version a publish without an explicit version gets.
"""

from __future__ import annotations

import asyncio
import fcntl
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from registry.files import AtomicFile, fsync_dir
from services.errors import InvalidRequest, ModelNotFound, VersionNotFound
from services.state.redis_kv import RedisKV

LATEST = "latest"
FIRST_VERSION = "1.0.0"
# Bounds on what is read back (the file or Redis may have been written by anything).
MAX_FILE_BYTES = 16 << 20
MAX_VERSIONS_PER_NAME = 10_000
MAX_LABELS_PER_NAME = 1_000

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_NUMERIC_RE = re.compile(r"^\d{1,18}(?:\.\d{1,18}){0,7}$")


class CatalogConflict(ValueError):
    """A write the catalogue refuses: the version exists, or a label would shadow one."""


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    version: str
    metadata_cid: str
    added_at: float


@dataclass(slots=True)
class CatalogEntry:
    """One name: its versions (by version string) and its labels (label -> version)."""

    name: str
    versions: dict[str, CatalogVersion] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def ordered(self) -> list[CatalogVersion]:
        """The versions, oldest first (:func:`version_key`)."""
        return sorted(self.versions.values(), key=lambda v: version_key(v.version, v.added_at))

    def newest(self) -> CatalogVersion | None:
        ordered = self.ordered()
        return ordered[-1] if ordered else None

    def resolve(self, selector: str) -> CatalogVersion:
        """``latest``, a version, or a label; else :class:`VersionNotFound` naming it."""
        if selector == LATEST:
            newest = self.newest()
            if newest is None:
                raise VersionNotFound(f"model {self.name!r} has no versions")
            return newest
        found = self.versions.get(selector)
        if found is not None:
            return found
        target = self.labels.get(selector)
        if target is not None and target in self.versions:
            return self.versions[target]
        raise VersionNotFound(
            f"model {self.name!r} has no version or label {selector!r}",
            versions=[v.version for v in self.ordered()],
            labels=sorted(self.labels),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": {
                v.version: {"metadataCid": v.metadata_cid, "added_at": v.added_at}
                for v in self.versions.values()
            },
            "labels": dict(self.labels),
        }


def version_key(version: str, added_at: float = 0.0) -> tuple[int, tuple[int, ...], float]:
    """Sort key: dotted integers by number, above any other version (those by time)."""
    if _NUMERIC_RE.match(version):
        return (1, tuple(int(p) for p in version.split(".")), added_at)
    return (0, (), added_at)


def next_version(entry: CatalogEntry | None) -> str:
    """The version of the next publish of a name: ``1.0.0`` for a new name, else the newest
    version with its last number incremented (``1.2.3`` -> ``1.2.4``, ``7`` -> ``8``).
    A newest version that is not dotted integers cannot be incremented: :class:`CatalogConflict`.
    """
    newest = entry.newest() if entry is not None else None
    if entry is None or newest is None:
        return FIRST_VERSION
    if not _NUMERIC_RE.match(newest.version):
        raise CatalogConflict(
            f"the newest version of {entry.name!r} is {newest.version!r}, which is not "
            "numbered; give the next one with --version"
        )
    *head, last = newest.version.split(".")
    return ".".join([*head, str(int(last) + 1)])


def parse_reference(reference: str) -> tuple[str, str]:
    """``NAME@SELECTOR`` (``NAME`` alone: ``NAME@latest``) -> (name, selector); a malformed
    reference is :class:`InvalidRequest` naming it."""
    name, at, selector = reference.partition("@")
    if not at:
        selector = LATEST
    check_name(name)
    if not (_VERSION_RE.match(selector) or _LABEL_RE.match(selector)):
        raise InvalidRequest(
            f"reference {reference!r}: expected NAME@latest, NAME@VERSION or NAME@LABEL"
        )
    return name, selector


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidRequest(
            f"model name {name!r}: 1-100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def check_version(version: str) -> str:
    if version == LATEST or not _VERSION_RE.match(version):
        raise InvalidRequest(
            f"version {version!r}: 1-64 letters, digits, '.', '_', '+' or '-', starting with a "
            f"letter or digit, and not {LATEST!r}"
        )
    return version


def check_label(label: str) -> str:
    if label == LATEST or not _LABEL_RE.match(label):
        raise InvalidRequest(
            f"label {label!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter, "
            f"and not {LATEST!r}"
        )
    return label


def _label_target(entry: CatalogEntry | None, name: str, label: str, version: str) -> None:
    """A label may point only at a recorded version, and may not be spelled like one."""
    if entry is None:
        raise ModelNotFound(name, f"model {name!r} is not in the catalogue")
    if version not in entry.versions:
        raise VersionNotFound(f"model {name!r} has no version {version!r}")
    if label in entry.versions:
        raise CatalogConflict(f"{label!r} is a version of {name!r}; a label cannot shadow it")


class Catalog(Protocol):
    """What the CLI and the repository need from the catalogue (async: it may be remote)."""

    async def get(self, name: str) -> CatalogEntry | None: ...

    async def entries(self) -> list[CatalogEntry]: ...

    async def add_version(self, name: str, version: str, metadata_cid: str) -> CatalogVersion:
        """Record a version; one that exists is :class:`CatalogConflict`."""
        ...

    async def set_label(self, name: str, label: str, version: str) -> None:
        """Point ``label`` at ``version`` (moving it if it pointed elsewhere)."""
        ...


# -- the file ------------------------------------------------------------------------------


def _entries_from(doc: Any) -> dict[str, CatalogEntry]:
    """Entries from the file's document; malformed parts are skipped, not trusted."""
    out: dict[str, CatalogEntry] = {}
    names = doc.get("names") if isinstance(doc, dict) else None
    if not isinstance(names, dict):
        return out
    for name, body in names.items():
        if not isinstance(name, str) or not _NAME_RE.match(name) or not isinstance(body, dict):
            continue
        entry = CatalogEntry(name)
        versions = body.get("versions")
        if isinstance(versions, dict):
            for version, v in list(versions.items())[:MAX_VERSIONS_PER_NAME]:
                if isinstance(v, dict) and isinstance(v.get("metadataCid"), str):
                    at = v.get("added_at")
                    entry.versions[version] = CatalogVersion(
                        version, v["metadataCid"], float(at) if isinstance(at, int | float) else 0.0
                    )
        labels = body.get("labels")
        if isinstance(labels, dict):
            for label, version in list(labels.items())[:MAX_LABELS_PER_NAME]:
                if isinstance(label, str) and isinstance(version, str):
                    entry.labels[label] = version
        out[name] = entry
    return out


class FileCatalog:
    """The catalogue in one JSON file (embedded deployments; see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: tuple[int, int] | None = None
        self._cached: dict[str, CatalogEntry] = {}

    def _read(self) -> dict[str, CatalogEntry]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._cached = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return self._cached
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{self.path} is over {MAX_FILE_BYTES} bytes")
        with open(self.path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{self.path} is not JSON: {exc}") from None
        self._seen, self._cached = stamp, _entries_from(doc)
        return self._cached

    def _write(self, entries: dict[str, CatalogEntry]) -> None:
        doc = {"names": {n: e.to_dict() for n, e in sorted(entries.items())}}
        with AtomicFile(self.path.parent, ".catalog-", ".json") as tmp:
            tmp.file.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            tmp.commit(self.path, fsync=True)
        fsync_dir(self.path.parent)
        self._seen = None

    @contextmanager
    def _locked(self) -> Iterator[dict[str, CatalogEntry]]:
        """The entries, read under an exclusive lock held until the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._seen = None
                yield {n: _copy(e) for n, e in self._read().items()}
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _add_version(self, name: str, version: str, metadata_cid: str) -> CatalogVersion:
        with self._locked() as entries:
            entry = entries.setdefault(name, CatalogEntry(name))
            if version in entry.versions:
                raise CatalogConflict(f"{name}@{version} exists; publish another version")
            if version in entry.labels:
                raise CatalogConflict(f"{version!r} is a label of {name!r}; pick another version")
            if len(entry.versions) >= MAX_VERSIONS_PER_NAME:
                raise CatalogConflict(f"{name!r} has {MAX_VERSIONS_PER_NAME} versions already")
            added = CatalogVersion(version, metadata_cid, time.time())
            entry.versions[version] = added
            self._write(entries)
            return added

    def _set_label(self, name: str, label: str, version: str) -> None:
        with self._locked() as entries:
            entry = entries.get(name)
            _label_target(entry, name, label, version)
            assert entry is not None
            if label not in entry.labels and len(entry.labels) >= MAX_LABELS_PER_NAME:
                raise CatalogConflict(f"{name!r} has {MAX_LABELS_PER_NAME} labels already")
            entry.labels[label] = version
            self._write(entries)

    async def get(self, name: str) -> CatalogEntry | None:
        entry = (await asyncio.to_thread(self._read)).get(name)
        return _copy(entry) if entry is not None else None

    async def entries(self) -> list[CatalogEntry]:
        found = await asyncio.to_thread(self._read)
        return [_copy(e) for _, e in sorted(found.items())]

    async def add_version(self, name: str, version: str, metadata_cid: str) -> CatalogVersion:
        check_name(name)
        check_version(version)
        return await asyncio.to_thread(self._add_version, name, version, metadata_cid)

    async def set_label(self, name: str, label: str, version: str) -> None:
        check_label(label)
        await asyncio.to_thread(self._set_label, name, label, version)


def _copy(entry: CatalogEntry) -> CatalogEntry:
    return CatalogEntry(entry.name, dict(entry.versions), dict(entry.labels))


# -- Redis ---------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCatalog:
    """The catalogue in Redis (keys under the store's prefix): ``catalog:names`` (a set),
    ``catalog:versions:<name>`` (version -> JSON ``{metadataCid, added_at}``) and
    ``catalog:labels:<name>`` (label -> version). A version is added with HSETNX, so two
    publishers never both get the same one. Redis not answering is
    :class:`~services.state.kv.KVUnavailable` (a retryable 503)."""

    # Reading a name's versions may take more than one short round trip.
    READ_TIMEOUT_S = 0.5

    def __init__(self, kv: RedisKV) -> None:
        self.kv = kv
        self._names = kv.key("catalog:names")

    def _versions_key(self, name: str) -> str:
        return self.kv.key(f"catalog:versions:{name}")

    def _labels_key(self, name: str) -> str:
        return self.kv.key(f"catalog:labels:{name}")

    async def _read(self, r: Redis, name: str) -> CatalogEntry | None:
        async with r.pipeline(transaction=False) as pipe:
            pipe.hlen(self._versions_key(name))
            pipe.hlen(self._labels_key(name))
            counts = await pipe.execute()
        if not counts[0] and not counts[1]:
            return None
        if counts[0] > MAX_VERSIONS_PER_NAME or counts[1] > MAX_LABELS_PER_NAME:
            raise ValueError(f"catalogue entry {name!r} in redis is over its bounds")
        async with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._versions_key(name))
            pipe.hgetall(self._labels_key(name))
            raw_versions, raw_labels = await pipe.execute()
        entry = CatalogEntry(name)
        for k, v in raw_versions.items():
            try:
                doc = orjson.loads(v)
                entry.versions[_text(k)] = CatalogVersion(
                    _text(k), str(doc["metadataCid"]), float(doc.get("added_at") or 0.0)
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        entry.labels = {_text(k): _text(v) for k, v in raw_labels.items()}
        return entry

    async def get(self, name: str) -> CatalogEntry | None:
        if not _NAME_RE.match(name):
            return None
        return await self.kv.run(lambda r: self._read(r, name), timeout_s=self.READ_TIMEOUT_S)

    async def entries(self) -> list[CatalogEntry]:
        async def read_all(r: Redis) -> list[CatalogEntry]:
            names = sorted(_text(n) for n in await r.smembers(self._names))
            found = [await self._read(r, n) for n in names if _NAME_RE.match(n)]
            return [e for e in found if e is not None]

        return await self.kv.run(read_all, timeout_s=self.READ_TIMEOUT_S)

    async def add_version(self, name: str, version: str, metadata_cid: str) -> CatalogVersion:
        check_name(name)
        check_version(version)
        added = CatalogVersion(version, metadata_cid, time.time())
        value = orjson.dumps({"metadataCid": metadata_cid, "added_at": added.added_at})

        async def write(r: Redis) -> bool:
            if await r.hexists(self._labels_key(name), version):
                raise CatalogConflict(f"{version!r} is a label of {name!r}; pick another version")
            if await r.hlen(self._versions_key(name)) >= MAX_VERSIONS_PER_NAME:
                raise CatalogConflict(f"{name!r} has {MAX_VERSIONS_PER_NAME} versions already")
            async with r.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._versions_key(name), version, value)
                pipe.sadd(self._names, name)
                created, _ = await pipe.execute()
            return bool(created)

        if not await self.kv.run(write, timeout_s=self.READ_TIMEOUT_S):
            raise CatalogConflict(f"{name}@{version} exists; publish another version")
        return added

    async def set_label(self, name: str, label: str, version: str) -> None:
        check_label(label)

        async def write(r: Redis) -> None:
            entry = await self._read(r, name)
            _label_target(entry, name, label, version)
            assert entry is not None
            if label not in entry.labels and len(entry.labels) >= MAX_LABELS_PER_NAME:
                raise CatalogConflict(f"{name!r} has {MAX_LABELS_PER_NAME} labels already")
            await r.hset(self._labels_key(name), label, version)

        await self.kv.run(write, timeout_s=self.READ_TIMEOUT_S)
