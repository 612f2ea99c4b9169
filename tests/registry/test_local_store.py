"""LocalContentStore: content-addressed writes, verified reads, CID validation."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest
from multiformats import CID, multihash

import registry.local_store as local_store
from registry.files import AtomicFile, sha256_file
from registry.local_store import LocalContentStore
from registry.store import (
    ContentIntegrityError,
    ContentNotFound,
    ContentStore,
    ContentTooLarge,
    InvalidCid,
)
from registry.unixfs import CHUNK_SIZE, cid_of_bytes

MIB = 1024 * 1024
FIVE_MIB_CID = "bafybeihqelb6aubsafst7trdwenmqtqrwg3k2yijt43wridokfoxkka3aq"  # see test_unixfs.py
_PERIOD = bytes(range(251))


def pattern(n: int) -> bytes:
    return (_PERIOD * (n // 251 + 1))[:n]


def temp_files(store: LocalContentStore) -> list[Path]:
    return [p for p in (store.root / "blobs").rglob("*") if p.name.startswith(".incoming-")]


async def chunks_of(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        yield data[pos : pos + step]
        pos += step
        i += 1
        await asyncio.sleep(0)


@pytest.fixture
def store(tmp_path: Path) -> LocalContentStore:
    return LocalContentStore(tmp_path / "store")


def test_implements_protocol(store: LocalContentStore) -> None:
    assert isinstance(store, ContentStore)
    assert store.name == "local"


def test_put_get_has(store: LocalContentStore) -> None:
    async def scenario() -> None:
        data = b"hello model"
        cid = await store.put_bytes(data)
        assert cid == cid_of_bytes(data)
        assert cid.startswith("bafk")
        assert await store.has(cid)
        assert await store.get_bytes(cid, max_size=len(data)) == data
        assert await store.get_bytes(cid, max_size=2**50) == data  # the bound is not a buffer size
        path = await store.get_path(cid, max_size=len(data))
        assert path == store.root / "blobs" / cid[-2:] / cid
        assert path.read_bytes() == data

        empty = await store.put_bytes(b"")
        assert empty == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        assert await store.get_bytes(empty, max_size=0) == b""

        absent = cid_of_bytes(b"never stored")
        assert not await store.has(absent)
        with pytest.raises(ContentNotFound) as info:
            await store.get_bytes(absent, max_size=100)
        assert info.value.cid == absent
        with pytest.raises(ContentNotFound):
            await store.get_path(absent, max_size=100)
        assert temp_files(store) == []

    asyncio.run(scenario())


def test_multi_block_content_and_other_spellings_of_its_cid(store: LocalContentStore) -> None:
    async def scenario() -> None:
        data = pattern(CHUNK_SIZE * 2 + 5)
        cid = await store.put_bytes(data)
        assert cid.startswith("bafy")
        v0 = str(CID.decode(cid).set(version=0, base="base58btc"))
        assert v0.startswith("Qm")
        assert await store.get_bytes(v0, max_size=len(data)) == data
        assert await store.get_bytes(cid.upper(), max_size=len(data)) == data
        base58 = str(CID.decode(cid).set(base="base58btc"))
        assert await store.has(base58)
        # A well-formed CIDv0 that was never stored is simply not found.
        missing_v0 = "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR"
        assert not await store.has(missing_v0)
        with pytest.raises(ContentNotFound):
            await store.get_bytes(missing_v0, max_size=10)

    asyncio.run(scenario())


def test_put_stream_equals_put_bytes(store: LocalContentStore) -> None:
    async def scenario() -> None:
        data = pattern(5 * MIB)
        streamed = await store.put_stream(chunks_of(data, [1, 65536, 300_001, 1_000_000, 7]))
        assert streamed == FIVE_MIB_CID
        assert await store.put_bytes(data) == streamed
        assert await store.get_bytes(streamed, max_size=5 * MIB) == data
        assert temp_files(store) == []

    asyncio.run(scenario())


def test_put_file(store: LocalContentStore, tmp_path: Path) -> None:
    async def scenario() -> None:
        source = tmp_path / "model.onnx"
        source.write_bytes(pattern(5 * MIB))
        cid = await store.put_file(source)
        assert cid == FIVE_MIB_CID
        assert (await store.get_path(cid, max_size=5 * MIB)).read_bytes() == source.read_bytes()

    asyncio.run(scenario())


def test_failed_stream_leaves_nothing_behind(store: LocalContentStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield pattern(3 * MIB)
        yield b"more"
        raise OSError("upload interrupted")

    async def wrong_type() -> AsyncIterator[bytes]:
        yield "text"  # type: ignore[misc]

    async def scenario() -> None:
        with pytest.raises(OSError, match="upload interrupted"):
            await store.put_stream(broken())
        with pytest.raises(TypeError):
            await store.put_stream(wrong_type())
        assert temp_files(store) == []
        assert [p for p in (store.root / "blobs").rglob("*") if p.is_file()] == []

    asyncio.run(scenario())


def test_corrupted_blob_is_detected_and_deleted(store: LocalContentStore) -> None:
    async def scenario() -> None:
        data = pattern(CHUNK_SIZE + 10)
        cid = await store.put_bytes(data)
        path = store.blob_path(cid)
        path.write_bytes(data[:-1] + b"\xff")
        with pytest.raises(ContentIntegrityError) as info:
            await store.get_bytes(cid, max_size=len(data))
        assert info.value.cid == cid
        assert cid in str(info.value)
        assert not path.exists()
        assert not await store.has(cid)

        # get_path detects it too, even after an earlier successful (cached) verification.
        cid = await store.put_bytes(data)
        assert await store.get_path(cid, max_size=len(data)) == path
        path.write_bytes(b"tampered")
        with pytest.raises(ContentIntegrityError, match=cid):
            await store.get_path(cid, max_size=len(data))
        assert not path.exists()

    asyncio.run(scenario())


def test_get_path_verification_is_cached_per_file_identity(
    store: LocalContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = local_store.cid_of_stream

    def counting(stream: BinaryIO) -> str:
        nonlocal calls
        calls += 1
        return real(stream)

    monkeypatch.setattr(local_store, "cid_of_stream", counting)

    async def scenario() -> None:
        data = pattern(3 * MIB)
        cid = await store.put_bytes(data)
        for _ in range(3):
            await store.get_path(cid, max_size=len(data))
        assert calls == 1
        path = store.blob_path(cid)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        await store.get_path(cid, max_size=len(data))
        assert calls == 2

    asyncio.run(scenario())


def test_too_large(store: LocalContentStore) -> None:
    async def scenario() -> None:
        data = pattern(1000)
        cid = await store.put_bytes(data)
        with pytest.raises(ContentTooLarge) as info:
            await store.get_bytes(cid, max_size=999)
        assert info.value.cid == cid
        with pytest.raises(ContentTooLarge):
            await store.get_path(cid, max_size=999)
        assert await store.get_bytes(cid, max_size=1000) == data  # untouched

    asyncio.run(scenario())


def test_invalid_cids_are_rejected_before_any_path_is_built(store: LocalContentStore) -> None:
    dag_cbor = str(CID("base32", 1, "dag-cbor", multihash.wrap(bytes(32), "sha2-256")))
    identity = str(CID("base32", 1, "raw", multihash.wrap(b"inline", "identity")))
    sha512 = str(CID("base32", 1, "raw", multihash.wrap(hashlib.sha512().digest(), "sha2-512")))
    good = cid_of_bytes(b"x")
    bad = [
        "../../etc/passwd",
        "garbage",
        "",
        "bafy",
        good + "/../../x",
        "/" + good,
        dag_cbor,
        identity,
        sha512,
    ]

    async def scenario() -> None:
        for value in bad:
            with pytest.raises(InvalidCid) as info:
                await store.get_bytes(value, max_size=10)
            assert repr(value) in str(info.value)
            with pytest.raises(InvalidCid):
                await store.get_path(value, max_size=10)
            with pytest.raises(InvalidCid):
                await store.has(value)
        with pytest.raises(InvalidCid):
            await store.get_bytes(None, max_size=10)  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_health_and_aclose(store: LocalContentStore) -> None:
    async def scenario() -> None:
        assert await store.health() == {"status": "ok", "kind": "local", "root": str(store.root)}
        await store.aclose()

    asyncio.run(scenario())


# -- registry.files: the atomic temporary file and SHA-256 the stores are built on -------------


def test_sha256_file(tmp_path: Path) -> None:
    for size in (0, 1, MIB, 3 * MIB + 7):
        path = tmp_path / f"f{size}"
        path.write_bytes(pattern(size))
        assert sha256_file(path) == hashlib.sha256(pattern(size)).hexdigest()


def test_atomic_file_commit_replaces_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    with AtomicFile(tmp_path, ".t-", ".tmp") as tmp:
        tmp.file.write(b"new")
        assert dest.read_bytes() == b"old"  # nothing visible before the commit
        assert tmp.commit(dest, fsync=True) == dest
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_atomic_file_written_by_path(tmp_path: Path) -> None:
    with AtomicFile(tmp_path, ".t-", ".tmp", mode=None) as tmp:
        tmp.file.close()  # another writer (an exporter) uses the path
        tmp.path.write_bytes(b"by path")
        tmp.commit(tmp_path / "dest", fsync=True)
    assert (tmp_path / "dest").read_bytes() == b"by path"
    assert (tmp_path / "dest").stat().st_mode & 0o777 == 0o600


def test_atomic_file_cleans_up_without_a_commit(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), AtomicFile(tmp_path, ".t-", ".tmp") as tmp:
        tmp.file.write(b"partial")
        raise RuntimeError("writer failed")
    with AtomicFile(tmp_path, ".t-", ".tmp") as tmp:
        tmp.file.write(b"not wanted")  # left without a commit: dropped too
    tmp.abort()  # a second abort is harmless
    with AtomicFile(tmp_path, ".t-", ".tmp") as tmp, pytest.raises(OSError):
        tmp.commit(tmp_path / "missing-dir" / "dest")  # a failed rename deletes the file
    assert list(tmp_path.iterdir()) == []
