"""The on-disk blob cache: atomic writes, a check on read, LRU within a byte bound."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from registry.blob_cache import BlobCache
from registry.store import ContentTooLarge
from registry.unixfs import cid_of_bytes


def put(cache: BlobCache, data: bytes) -> str:
    cid = cid_of_bytes(data)
    blob = cache.begin()
    blob.write(data[: len(data) // 2])
    blob.write(data[len(data) // 2 :])
    cache.commit(cid, blob)
    return cid


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".incoming-")]


def test_a_committed_blob_reads_back_and_nothing_partial_is_left(tmp_path: Path):
    cache = BlobCache(tmp_path, 1 << 20)
    data = os.urandom(5000)
    cid = put(cache, data)
    path = cache.lookup(cid, 1 << 20)
    assert path is not None and path.read_bytes() == data
    assert path.name == cid
    assert cache.read_bytes(cid, 1 << 20) == data
    assert cache.contains(cid)
    assert leftovers(tmp_path) == []
    with pytest.raises(ContentTooLarge):
        cache.lookup(cid, 4999)


def test_an_aborted_blob_leaves_nothing(tmp_path: Path):
    cache = BlobCache(tmp_path, 1 << 20)
    blob = cache.begin()
    blob.write(b"half of something")
    blob.abort()
    assert leftovers(tmp_path) == []
    assert cache.stats()["blobs"] == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_record", "bad_record"])
def test_a_damaged_blob_is_dropped_on_read(tmp_path: Path, damage: str):
    cache = BlobCache(tmp_path, 1 << 20)
    data = os.urandom(5000)
    cid = put(cache, data)
    path = cache.path_for(cid)
    record = path.with_name(path.name + ".sha256")
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[1234] ^= 0xFF
        path.write_bytes(raw)
    elif damage == "truncate":
        path.write_bytes(data[:-1])
    elif damage == "no_record":
        record.unlink()
    else:
        record.write_text("0" * 64 + " 5000\n")
    fresh = BlobCache(tmp_path, 1 << 20)  # nothing remembered: the file is checked
    assert fresh.lookup(cid, 1 << 20) is None
    assert not path.exists()
    assert fresh.stats()["corrupt_dropped"] == 1
    put(fresh, data)
    assert fresh.read_bytes(cid, 1 << 20) == data


def test_damage_after_a_verified_read_is_caught_when_the_file_changes(tmp_path: Path):
    cache = BlobCache(tmp_path, 1 << 20)
    data = os.urandom(5000)
    cid = put(cache, data)
    assert cache.lookup(cid, 1 << 20) is not None
    path = cache.path_for(cid)
    time.sleep(0.01)
    raw = bytearray(data)
    raw[0] ^= 1
    path.write_bytes(raw)  # a new mtime: the remembered check no longer applies
    assert cache.read_bytes(cid, 1 << 20) is None
    assert cache.lookup(cid, 1 << 20) is None


def test_least_recently_used_blobs_go_first_when_over_the_bound(tmp_path: Path):
    cache = BlobCache(tmp_path, 3000, protect_s=0)
    a = put(cache, b"a" * 1000)
    b = put(cache, b"b" * 1000)
    c = put(cache, b"c" * 1000)
    assert cache.lookup(a, 10_000) is not None  # a is now the most recently used
    d = put(cache, b"d" * 1000)
    assert [cache.contains(x) for x in (a, b, c, d)] == [True, False, True, True]
    stats = cache.stats()
    assert stats["bytes"] <= 3000 and stats["evictions"] == 1
    big = put(cache, b"e" * 5000)  # larger than the bound: kept alone
    assert cache.contains(big)
    assert not any(cache.contains(x) for x in (a, c, d))


def test_blobs_in_use_are_kept_over_the_bound(tmp_path: Path):
    cache = BlobCache(tmp_path, 2000, protect_s=60)
    a = put(cache, b"a" * 1000)
    b = put(cache, b"b" * 1000)
    c = put(cache, b"c" * 1000)
    assert all(cache.contains(x) for x in (a, b, c))
    assert cache.stats()["bytes"] == 3000


def test_a_restarted_cache_finds_its_blobs_in_recency_order(tmp_path: Path):
    cache = BlobCache(tmp_path, 10_000, protect_s=0)
    a = put(cache, b"a" * 1000)
    b = put(cache, b"b" * 1000)
    old = time.time() - 3600
    os.utime(cache.path_for(a), (old, old))  # a was used long ago
    (tmp_path / ".incoming-crashed.tmp").write_bytes(b"x")
    stale = time.time() - 7200
    os.utime(tmp_path / ".incoming-crashed.tmp", (stale, stale))

    again = BlobCache(tmp_path, 1500, protect_s=0)
    assert again.stats()["blobs"] == 2
    assert leftovers(tmp_path) == []
    put(again, b"c" * 400)  # over the bound: the oldest (a) goes
    assert not again.contains(a)
    assert again.contains(b)


def test_ranges_whose_digest_was_checked_already_are_recorded_and_checked_on_read(
    tmp_path: Path,
):
    cache = BlobCache(tmp_path, 1 << 20)
    leaves = [os.urandom(1000), os.urandom(1000)]
    data = b"head" + b"".join(leaves) + b"tail"
    cid = cid_of_bytes(data)
    blob = cache.begin()
    blob.write(b"head")
    for leaf in leaves:
        blob.write_digested(leaf, hashlib.sha256(leaf).digest())
    blob.write(b"tail")
    cache.commit(cid, blob)
    record = cache.path_for(cid).with_name(cid + ".sha256").read_text().splitlines()
    assert record[0].endswith(f" {len(data)} 4")  # head, two leaves, tail
    assert BlobCache(tmp_path, 1 << 20).read_bytes(cid, 1 << 20) == data

    raw = bytearray(data)
    raw[1500] ^= 1  # inside the second leaf
    cache.path_for(cid).write_bytes(raw)
    assert BlobCache(tmp_path, 1 << 20).lookup(cid, 1 << 20) is None
