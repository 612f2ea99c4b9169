"""A DAG that links one tiny block over and over, and fetches that must stay within bounds.

The blocks are built here with ``registry.dagpb`` / ``registry.unixfs_data``: one 64-byte raw
leaf, a node linking it thousands of times, a root linking that node thousands of times. Its
root declares a file of hundreds of megabytes that costs a few kilobytes to send; the walk
must refuse it after a bounded number of steps, whatever way it is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import httpx
import pytest

from registry.blob_cache import BlobCache
from registry.dag_blocks import MIN_REPEATED_BYTES, DagError, cid_str
from registry.dag_leaves import LeafPlanner
from registry.dag_verify import FileAssembler
from registry.dagpb import PBLink, PBNode, encode_node
from registry.ipfs_store import FetchesBusy, IpfsConfig, IpfsContentStore
from registry.store import ContentIntegrityError, ContentTooLarge, ContentUnavailable
from registry.unixfs import DAG_PB_PREFIX, RAW_PREFIX
from registry.unixfs_data import UnixFSData, UnixFSType, encode_unixfs
from tests.ipfs_node import IpfsNode

LEAF = bytes(range(64))
FANOUT = 2000  # links per node: 2000 x 2000 x 64 bytes = a declared 256 MB file


def _node(child: bytes, child_size: int, count: int) -> tuple[bytes, bytes]:
    data = encode_unixfs(
        UnixFSData(UnixFSType.FILE, filesize=child_size * count, blocksizes=(child_size,) * count)
    )
    block = encode_node(
        PBNode(links=tuple(PBLink(child, "", child_size) for _ in range(count)), data=data)
    )
    return DAG_PB_PREFIX + hashlib.sha256(block).digest(), block


def repeated_dag() -> tuple[bytes, list[tuple[bytes, bytes]], int]:
    """Root CID, blocks (leaf first), declared file size."""
    leaf_cid = RAW_PREFIX + hashlib.sha256(LEAF).digest()
    mid_cid, mid = _node(leaf_cid, len(LEAF), FANOUT)
    root_cid, root = _node(mid_cid, len(LEAF) * FANOUT, FANOUT)
    return root_cid, [(leaf_cid, LEAF), (mid_cid, mid), (root_cid, root)], len(LEAF) * FANOUT**2


class _Sink:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "w+b")  # noqa: SIM115 - closed by the test

    def write(self, data: bytes) -> int:
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def fileno(self) -> int:
        return self.f.fileno()


def test_the_block_walk_refuses_a_dag_of_repeats_after_few_steps(tmp_path: Path):
    root, blocks, size = repeated_dag()
    sink = _Sink(tmp_path / "out")
    assembler = FileAssembler(root, sink, size)  # type: ignore[arg-type]
    t0 = time.monotonic()
    with pytest.raises(DagError, match="already used more often") as exc:
        for cid, data in reversed(blocks):
            assembler.add_block(cid, data)
    assert time.monotonic() - t0 < 10
    assert exc.value.cid == cid_str(root)
    # Refused within the repeat bound, long before the 4 million steps the size allows.
    written = sink.f.tell()
    assert written <= (1024 + size // MIN_REPEATED_BYTES + 2) * len(LEAF)
    sink.f.close()


def test_the_leaf_planner_refuses_it_before_listing_millions_of_leaves():
    root, blocks, size = repeated_dag()
    planner = LeafPlanner(root, size)
    by_cid = dict(blocks)
    while wanted := planner.wanted():
        for cid in wanted:
            planner.add_node(cid, by_cid[cid])
    t0 = time.monotonic()
    with pytest.raises(DagError, match="already used more often"):
        planner.leaves()
    assert time.monotonic() - t0 < 10


def test_a_file_of_zeros_in_ordinary_chunks_still_repeats_freely(tmp_path: Path):
    # 64 links to one 256 KiB leaf: what `ipfs add` makes of 16 MiB of zeros.
    chunk = bytes(256 * 1024)
    leaf_cid = RAW_PREFIX + hashlib.sha256(chunk).digest()
    root, block = _node(leaf_cid, len(chunk), 64)
    sink = _Sink(tmp_path / "zeros")
    assembler = FileAssembler(root, sink, 64 * len(chunk))  # type: ignore[arg-type]
    assembler.add_block(root, block)
    assembler.add_block(leaf_cid, chunk)
    assert assembler.result() == 64 * len(chunk)
    sink.f.close()


def test_a_download_reserves_its_size_against_the_disk_bound(tmp_path: Path):
    cache = BlobCache(tmp_path / "blobs", 10 << 20)
    first = cache.begin(8 << 20)
    assert cache.stats()["reserved_bytes"] == 8 << 20
    with pytest.raises(ContentUnavailable, match="downloads in progress"):
        cache.begin(4 << 20)
    first.abort()
    assert cache.stats()["reserved_bytes"] == 0
    second = cache.begin(4 << 20)
    second.write(b"x" * 100)
    name = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    cache.commit(name, second)
    assert cache.stats()["reserved_bytes"] == 0 and cache.stats()["bytes"] == 100


def _block_put(api: str, data: bytes, codec: str) -> str:
    r = httpx.post(
        f"{api}/api/v0/block/put",
        params={"format": codec, "cid-codec": codec, "mhtype": "sha2-256", "version": "1"},
        files={"file": ("block", data)},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["Key"])


def _store(tmp_path: Path, api: str, **kw: int) -> IpfsContentStore:
    config = IpfsConfig(api_url=api, find_timeout_s=2.0, timeout_s=20.0, retries=1)
    return IpfsContentStore(config, BlobCache(tmp_path / "blobs", 1 << 30), **kw)


def test_a_node_serving_the_repeated_dag_is_refused_quickly(ipfs_node: IpfsNode, tmp_path: Path):
    root, blocks, size = repeated_dag()
    for cid, data in blocks:
        codec = "raw" if cid[:4] == RAW_PREFIX else "dag-pb"
        assert _block_put(ipfs_node.api_url, data, codec) == cid_str(cid)
    store = _store(tmp_path, ipfs_node.api_url)

    async def go() -> None:
        try:
            t0 = time.monotonic()
            with pytest.raises(ContentIntegrityError, match="already used more often"):
                await store.get_path(cid_str(root), size)
            assert time.monotonic() - t0 < 15
            # Never more than the caller's bound: the root says 256 MB, the caller allows 1 MB.
            with pytest.raises(ContentTooLarge):
                await store.get_path(cid_str(root), 1 << 20)
            # What was read is a few times the blocks themselves, not the declared size.
            assert store.bytes_fetched < 3 * sum(len(data) for _, data in blocks)
        finally:
            await store.aclose()

    asyncio.run(go())
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []


def test_fetches_beyond_the_cap_are_refused_at_once(ipfs_node: IpfsNode, tmp_path: Path):
    cids = [ipfs_node.add(bytes([i]) * 300_000) for i in range(3)]
    store = _store(tmp_path, ipfs_node.api_url, max_concurrent_fetches=1)

    async def go() -> list[object]:
        try:
            return await asyncio.gather(
                store.get_path(cids[0], 1 << 20),
                store.get_path(cids[0], 1 << 20),  # joins the first fetch: not counted twice
                store.get_path(cids[1], 1 << 20),
                return_exceptions=True,
            )
        finally:
            await store.aclose()

    first, joined, other = asyncio.run(go())
    # Whichever CID's fetch starts first holds the one slot; the other CID's is refused at
    # once, and the two requests for the same CID share one fetch (same outcome).
    assert type(first) is type(joined)
    if isinstance(first, Path):
        assert joined == first
        refused = other
    else:
        assert isinstance(other, Path)
        refused = first
    assert isinstance(refused, FetchesBusy) and refused.retry_after_s == 1
    assert "CIDSERVE_MAX_CONCURRENT_FETCHES" in str(refused)
