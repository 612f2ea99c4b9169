"""The catalogue commands of the ``cidserve`` CLI: ``label`` and ``catalog``, and the
catalogue step of ``publish`` (:func:`publish_version`, :func:`record_version`).

They write the operator's catalogue directly (:mod:`services.state.catalog`): Redis when
``CIDSERVE_REDIS_URL`` is set (under ``CIDSERVE_REDIS_PREFIX``), else
``<CIDSERVE_DATA_DIR>/catalog.json``, the same place the server reads it from.

Exit codes: 0 done; 1 refused (an unknown name or version, a version that exists, the
catalogue unreachable); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.errors import ServiceError
from services.settings import Settings
from services.state.catalog import (
    Catalog,
    CatalogConflict,
    CatalogEntry,
    CatalogVersion,
    FileCatalog,
    RedisCatalog,
    check_version,
    next_version,
    parse_reference,
)
from services.state.kv import KVUnavailable

# A command may wait longer on Redis than a request does (one connection, once).
CLI_REDIS_TIMEOUT_MS = 2000.0

CatalogErrors = (CatalogConflict, ServiceError, KVUnavailable, ValueError, OSError)


@asynccontextmanager
async def open_catalog(settings: Settings) -> AsyncIterator[Catalog]:
    """The catalogue the server of these settings reads (closed on leaving)."""
    if settings.redis_url is None:
        yield FileCatalog(settings.data_dir / "catalog.json")
        return
    from services.state.redis_kv import RedisKV

    kv = RedisKV(
        settings.redis_url,
        timeout_ms=max(settings.redis_timeout_ms, CLI_REDIS_TIMEOUT_MS),
        prefix=settings.redis_prefix,
        backoff_ms=settings.redis_backoff_ms,
        max_connections=2,
    )
    try:
        yield RedisCatalog(kv)
    finally:
        await kv.aclose()


async def publish_version(catalog: Catalog, name: str, version: str | None) -> str:
    """The version a publish of ``name`` gets: ``version`` when given and new (one that
    exists is :class:`CatalogConflict`), else :func:`next_version` of the catalogue's."""
    entry = await catalog.get(name)
    if version is None:
        return next_version(entry)
    check_version(version)
    if entry is not None and version in entry.versions:
        raise CatalogConflict(
            f"{name}@{version} exists (metadata {entry.versions[version].metadata_cid}); "
            "publish another version, or omit --version for the next one"
        )
    return version


async def record_version(
    catalog: Catalog, name: str, version: str, metadata_cid: str
) -> CatalogVersion:
    """Record a published version in the catalogue."""
    return await catalog.add_version(name, version, metadata_cid)


def _entry_doc(entry: CatalogEntry) -> dict[str, object]:
    newest = entry.newest()
    return {
        "name": entry.name,
        "latest": newest.version if newest is not None else None,
        "versions": [
            {"version": v.version, "metadataCid": v.metadata_cid} for v in entry.ordered()
        ],
        "labels": dict(sorted(entry.labels.items())),
    }


def cmd_label(args: argparse.Namespace, settings: Settings) -> int:
    """``cidserve label NAME@VERSION LABEL``: point LABEL at that version (moving it)."""
    try:
        name, version = parse_reference(args.reference)
    except ServiceError as exc:
        print(f"cidserve label: {exc}", file=sys.stderr)
        return 2
    if "@" not in args.reference:
        print("cidserve label: give the version as NAME@VERSION", file=sys.stderr)
        return 2

    async def run() -> int:
        async with open_catalog(settings) as catalog:
            entry = await catalog.get(name)
            # NAME@latest or NAME@OTHER_LABEL name a version too: the label gets that one.
            target = entry.resolve(version).version if entry is not None else version
            previous = entry.labels.get(args.label) if entry is not None else None
            await catalog.set_label(name, args.label, target)
        moved = f" (was {previous})" if previous and previous != target else ""
        print(f"{name}@{args.label} -> {target}{moved}")
        return 0

    try:
        return asyncio.run(run())
    except CatalogErrors as exc:
        print(f"cidserve label: {exc}", file=sys.stderr)
        return 1


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    """``cidserve catalog [NAME]``: names, their versions (oldest first) and labels."""

    async def run() -> list[CatalogEntry]:
        async with open_catalog(settings) as catalog:
            if args.name is None:
                return await catalog.entries()
            entry = await catalog.get(args.name)
            if entry is None:
                raise CatalogConflict(f"model {args.name!r} is not in the catalogue")
            return [entry]

    try:
        entries = asyncio.run(run())
    except CatalogErrors as exc:
        print(f"cidserve catalog: {exc}", file=sys.stderr)
        return 1
    docs = [_entry_doc(e) for e in entries]
    if args.json:
        print(json.dumps(docs))
        return 0
    for doc in docs:
        print(f"{doc['name']}  (latest {doc['latest']})")
        labels_of: dict[str, list[str]] = {}
        for label, version in doc["labels"].items():  # type: ignore[attr-defined]
            labels_of.setdefault(version, []).append(label)
        for v in doc["versions"]:  # type: ignore[attr-defined]
            tags = ", ".join(labels_of.get(v["version"], []))
            print(f"  {v['version']}  {v['metadataCid']}" + (f"  [{tags}]" if tags else ""))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``label`` and ``catalog``."""
    lab = sub.add_parser(
        "label", help="point a label of the catalogue at a version (NAME@LABEL then loads it)"
    )
    lab.add_argument("reference", help="NAME@VERSION (or NAME@latest, NAME@OTHER_LABEL)")
    lab.add_argument("label", help="the label, e.g. stable; moved if it points elsewhere")
    lab.set_defaults(func=cmd_label)

    cat = sub.add_parser("catalog", help="list the catalogue: names, versions and labels")
    cat.add_argument("name", nargs="?", help="only this name")
    cat.add_argument("--json", action="store_true", help="print a JSON array")
    cat.set_defaults(func=cmd_catalog)
