"""The operator's catalogue: versions, labels, latest, on a file and on Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from services.errors import InvalidRequest, ModelNotFound, VersionNotFound
from services.state.catalog import (
    Catalog,
    CatalogConflict,
    FileCatalog,
    RedisCatalog,
    next_version,
    parse_reference,
)
from services.state.redis_kv import RedisKV
from tests.redis_support import REDIS_URL, delete_prefix, require_redis, unique_prefix

CatalogFactory = Callable[[], AbstractAsyncContextManager[Catalog]]


@pytest.fixture(params=["file", "redis"])
def open_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogFactory]:
    """Opens a fresh handle on the same catalogue each time (as two processes would)."""
    if request.param == "file":

        @asynccontextmanager
        async def file_catalog() -> AsyncIterator[Catalog]:
            yield FileCatalog(tmp_path / "data" / "catalog.json")

        yield file_catalog
        return
    require_redis()
    prefix = unique_prefix("catalog")

    @asynccontextmanager
    async def redis_catalog() -> AsyncIterator[Catalog]:
        kv = RedisKV(REDIS_URL, prefix=prefix, timeout_ms=500)
        try:
            yield RedisCatalog(kv)
        finally:
            await kv.aclose()

    yield redis_catalog
    delete_prefix(REDIS_URL, prefix)


def test_versions_labels_and_latest(open_catalog: CatalogFactory) -> None:
    async def main() -> None:
        async with open_catalog() as writer:
            assert await writer.get("resnet") is None
            await writer.add_version("resnet", "1.0.9", "cid-a")
            await writer.add_version("resnet", "1.0.10", "cid-b")
            await writer.add_version("resnet", "exp", "cid-x")
            await writer.set_label("resnet", "stable", "1.0.9")
        async with open_catalog() as reader:  # another process sees it all
            entry = await reader.get("resnet")
            assert entry is not None
            # Numbered versions by number (1.0.10 > 1.0.9), others below them.
            assert [v.version for v in entry.ordered()] == ["exp", "1.0.9", "1.0.10"]
            assert entry.resolve("latest").metadata_cid == "cid-b"
            assert entry.resolve("1.0.9").metadata_cid == "cid-a"
            assert entry.resolve("stable").metadata_cid == "cid-a"
            assert next_version(entry) == "1.0.11"
            with pytest.raises(VersionNotFound, match="'nightly'"):
                entry.resolve("nightly")

            # A label moves; an existing version is refused; labels need a known target.
            await reader.set_label("resnet", "stable", "1.0.10")
            with pytest.raises(CatalogConflict, match="exists"):
                await reader.add_version("resnet", "1.0.10", "cid-other")
            with pytest.raises(VersionNotFound, match=r"'9\.9'"):
                await reader.set_label("resnet", "beta", "9.9")
            with pytest.raises(ModelNotFound, match="'vgg'"):
                await reader.set_label("vgg", "beta", "1.0.0")
            with pytest.raises(CatalogConflict, match="shadow"):
                await reader.set_label("resnet", "exp", "1.0.9")
            with pytest.raises(InvalidRequest, match="latest"):
                await reader.set_label("resnet", "latest", "1.0.9")
        async with open_catalog() as again:
            entry = await again.get("resnet")
            assert entry is not None and entry.labels == {"stable": "1.0.10"}
            assert entry.resolve("stable").metadata_cid == "cid-b"
            assert entry.resolve("1.0.10").metadata_cid == "cid-b"  # not replaced
            assert [e.name for e in await again.entries()] == ["resnet"]

    asyncio.run(main())


def test_concurrent_publishers_never_share_a_version(open_catalog: CatalogFactory) -> None:
    async def main() -> None:
        async with open_catalog() as a, open_catalog() as b:

            async def add(catalog: Catalog, cid: str) -> bool:
                try:
                    await catalog.add_version("m", "2", cid)
                except CatalogConflict:
                    return False
                return True

            results = await asyncio.gather(*(add(a if i % 2 else b, f"c{i}") for i in range(8)))
            assert sum(results) == 1
            # Distinct versions from many writers: none lost.
            await asyncio.gather(*(a.add_version("m", f"3.{i}", f"d{i}") for i in range(10)))
            entry = await b.get("m")
            assert entry is not None and len(entry.versions) == 11

    asyncio.run(main())


def test_next_version_rules() -> None:
    from services.state.catalog import CatalogEntry, CatalogVersion

    assert next_version(None) == "1.0.0"
    entry = CatalogEntry("m", {"7": CatalogVersion("7", "c", 1.0)})
    assert next_version(entry) == "8"
    entry.versions["2.3.9"] = CatalogVersion("2.3.9", "c", 2.0)  # numbered: 7 still newest
    assert next_version(entry) == "8"
    only_named = CatalogEntry("m", {"beta": CatalogVersion("beta", "c", 1.0)})
    with pytest.raises(CatalogConflict, match="--version"):
        next_version(only_named)


def test_references_are_checked() -> None:
    assert parse_reference("resnet@1.2.3") == ("resnet", "1.2.3")
    assert parse_reference("resnet@stable") == ("resnet", "stable")
    assert parse_reference("resnet") == ("resnet", "latest")
    for bad in ("", "@1", "res net@1", "resnet@", "resnet@a b", "x" * 101 + "@1"):
        with pytest.raises(InvalidRequest):
            parse_reference(bad)


def test_a_damaged_file_is_refused_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    doc = {
        "names": {
            "ok": {"versions": {"1": {"metadataCid": "cid", "added_at": 1}}, "labels": {}},
            "bad name!": {"versions": {"1": {"metadataCid": "cid"}}},
            "partial": {"versions": {"1": "not an object", "2": {"metadataCid": 5}}},
        }
    }
    path.write_text(json.dumps(doc))

    async def main() -> None:
        catalog = FileCatalog(path)
        names = [e.name for e in await catalog.entries()]
        assert names == ["ok", "partial"]
        partial = await catalog.get("partial")
        assert partial is not None and partial.versions == {}
        path.write_text("{not json")
        with pytest.raises(ValueError, match="not JSON"):
            await catalog.get("ok")

    asyncio.run(main())
