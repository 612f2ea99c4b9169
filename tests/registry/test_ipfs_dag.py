"""Verifying UnixFS DAGs block by block, and reading CAR streams, from untrusted sources.

The blocks come from ``registry.unixfs.UnixFSBuilder`` (whose CIDs match the reference
importer, see tests/registry/test_unixfs.py) with small chunks and fan-out, so deep trees cost
kilobytes; others are written by hand with ``registry.dagpb`` to be malformed in one precise way.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from collections.abc import Iterable

import dag_cbor
import pytest
from multiformats import CID, multihash

from registry.car import MAX_SECTION_SIZE, CarFormatError, CarReader
from registry.dag_blocks import BlockMismatch, DagError, DagTooLarge, cid_str, parse_cid
from registry.dag_leaves import FileSink, LeafPlanner, LeafVerifier, NotPlannable
from registry.dag_verify import FileAssembler
from registry.dagpb import PBLink, PBNode, decode_node, encode_node
from registry.protobuf import encode_varint
from registry.unixfs import RAW_PREFIX, UnixFSBuilder
from registry.unixfs_data import UnixFSData, UnixFSType, encode_unixfs

Block = tuple[bytes, bytes]  # (binary CID, bytes)


def build(data: bytes, chunk_size: int = 1000, max_links: int = 3) -> tuple[bytes, list[Block]]:
    """Root CID and the blocks of ``data`` (leaves first, root last; duplicates kept)."""
    blocks: list[Block] = []
    builder = UnixFSBuilder(
        lambda cid, block: blocks.append((bytes(CID.decode(cid)), block)),
        chunk_size=chunk_size,
        max_links=max_links,
    )
    builder.update(data)
    root = bytes(CID.decode(builder.finish()))
    return root, blocks


def dfs(root: bytes, blocks: list[Block]) -> list[Block]:
    """The blocks in depth-first pre-order without repeats, as ``ipfs dag export`` sends them."""
    by_cid = dict(blocks)
    out: list[Block] = []
    seen: set[bytes] = set()

    def visit(cid: bytes) -> None:
        if cid in seen:
            return
        seen.add(cid)
        out.append((cid, by_cid[cid]))
        if cid[:4] != RAW_PREFIX:
            for link in decode_node(by_cid[cid]).links:
                visit(link.hash)

    visit(root)
    return out


def assemble(root: bytes, blocks: Iterable[Block], max_size: int = 1 << 30, **kwargs: int) -> bytes:
    with tempfile.TemporaryFile() as out:
        asm = FileAssembler(root, out, max_size, **kwargs)
        for cid, block in blocks:
            asm.add_block(cid, block)
        asm.result()
        out.seek(0)
        return out.read()


def raw_cid(block: bytes) -> bytes:
    return RAW_PREFIX + hashlib.sha256(block).digest()


def pb_cid(block: bytes, v0: bool = False) -> bytes:
    digest = hashlib.sha256(block).digest()
    return (b"\x12\x20" if v0 else bytes.fromhex("01701220")) + digest


def file_node(children: list[tuple[bytes, int]], data: bytes | None = None) -> bytes:
    sizes = tuple(size for _, size in children)
    fs = UnixFSData(
        type=UnixFSType.FILE,
        data=data,
        filesize=len(data or b"") + sum(sizes),
        blocksizes=sizes,
    )
    links = tuple(PBLink(cid, "", size) for cid, size in children)
    return encode_node(PBNode(links=links, data=encode_unixfs(fs)))


def car(root: bytes, blocks: Iterable[Block]) -> bytes:
    header = dag_cbor.encode({"roots": [CID.decode(root)], "version": 1})
    out = bytearray(encode_varint(len(header)) + header)
    for cid, block in blocks:
        out += encode_varint(len(cid) + len(block)) + cid + block
    return bytes(out)


DATA = random.Random(7).randbytes(20_000)


# -- FileAssembler -------------------------------------------------------------------------------


def test_a_deep_dag_reassembles_in_export_order_and_in_any_other():
    root, blocks = build(DATA)
    export_order = dfs(root, blocks)
    assert len(export_order) > 25  # 20 leaves under a tree of fan-out 3: depth 3
    assert assemble(root, export_order) == DATA
    assert assemble(root, blocks) == DATA  # leaves first: buffered until needed
    shuffled = list(export_order)
    random.Random(1).shuffle(shuffled)
    assert assemble(root, shuffled) == DATA
    assert assemble(root, [*export_order, *export_order]) == DATA  # repeats are ignored


def test_single_block_files_are_their_own_root():
    for data in (b"", b"x", bytes(999)):
        root, blocks = build(data)
        assert root[:4] == RAW_PREFIX
        assert assemble(root, blocks) == data


def test_a_dag_that_repeats_subtrees_is_replayed_from_what_was_written():
    data = bytes(50_000)  # zeros: one leaf, and identical nodes above it
    root, blocks = build(data)
    unique = dfs(root, blocks)
    assert len(unique) < 10
    assert assemble(root, unique) == data


def test_a_flipped_byte_rejects_the_block_and_names_it():
    root, blocks = build(DATA)
    order = dfs(root, blocks)
    i = next(i for i, (cid, _) in enumerate(order) if cid[:4] == RAW_PREFIX and i > 10)
    cid, block = order[i]
    bad = bytearray(block)
    bad[len(bad) // 2] ^= 0x01
    order[i] = (cid, bytes(bad))
    with pytest.raises(BlockMismatch) as exc:
        assemble(root, order)
    assert exc.value.cid == cid_str(cid)
    assert cid_str(cid) in str(exc.value)
    assert "sha2-256" in str(exc.value)


def test_a_block_delivered_under_another_cid_is_rejected():
    root, blocks = build(DATA)
    order = dfs(root, blocks)
    leaves = [i for i, (cid, _) in enumerate(order) if cid[:4] == RAW_PREFIX]
    a, b = leaves[3], leaves[4]
    order[a] = (order[a][0], order[b][1])  # same length, other content
    with pytest.raises(BlockMismatch) as exc:
        assemble(root, order)
    assert exc.value.cid == cid_str(order[a][0])


def test_a_missing_block_is_named_and_the_file_is_not_complete():
    root, blocks = build(DATA)
    order = dfs(root, blocks)
    gone = next(cid for cid, _ in order[5:] if cid[:4] == RAW_PREFIX)
    with tempfile.TemporaryFile() as out:
        asm = FileAssembler(root, out, 1 << 20)
        for cid, block in order:
            if cid != gone:
                asm.add_block(cid, block)
        assert not asm.done
        assert asm.next_needed() == gone
        assert asm.missing() == cid_str(gone)
        with pytest.raises(DagError, match="is missing") as exc:
            asm.result()
        assert exc.value.cid == cid_str(gone)


def test_size_bounds_apply_before_the_leaves_arrive():
    root, blocks = build(DATA)
    order = dfs(root, blocks)
    with tempfile.TemporaryFile() as out:
        asm = FileAssembler(root, out, max_size=len(DATA) - 1)
        with pytest.raises(DagTooLarge):
            asm.add_block(*order[0])  # the root says how large the file is
        assert out.tell() == 0
    big = os.urandom(3000)
    raw_root, raw_blocks = build(big, chunk_size=10_000)
    with pytest.raises(DagTooLarge):
        assemble(raw_root, raw_blocks, max_size=2999)


def test_out_of_order_blocks_are_buffered_only_up_to_the_bound():
    root, blocks = build(DATA)
    with pytest.raises(DagError, match="out of order"):
        assemble(root, blocks, max_buffered=5000)  # leaves first: 20 KB before the root


def test_sizes_that_disagree_with_the_unixfs_metadata_are_rejected():
    leaf = b"a" * 100
    node = file_node([(raw_cid(leaf), 99)])  # the parent says 99 bytes
    root = pb_cid(node)
    with pytest.raises(DagError, match="its parent says 99"):
        assemble(root, [(root, node), (raw_cid(leaf), leaf)])


def test_a_directory_is_not_a_file():
    node = encode_node(PBNode(data=encode_unixfs(UnixFSData(type=UnixFSType.DIRECTORY))))
    root = pb_cid(node)
    with pytest.raises(DagError, match="directory, not a file") as exc:
        assemble(root, [(root, node)])
    assert exc.value.cid == cid_str(root)


def test_malformed_dag_pb_is_rejected_naming_the_block():
    junk = b"\x0a\x05ab"  # Data field that claims 5 bytes and has 2
    root = pb_cid(junk)
    with pytest.raises(DagError, match="not a valid UnixFS dag-pb node") as exc:
        assemble(root, [(root, junk)])
    assert exc.value.cid == cid_str(root)


def test_a_dag_that_links_far_more_blocks_than_its_size_needs_is_refused():
    empty = b""
    level = raw_cid(empty)
    blocks: list[Block] = [(level, empty)]
    for _ in range(6):  # 174**6 visits of an empty leaf if it were walked
        node = file_node([(level, 0)] * 174)
        level = pb_cid(node)
        blocks.append((level, node))
    with pytest.raises(DagError, match="links more blocks"):
        assemble(level, blocks)


def test_cidv0_roots_and_dag_pb_leaves_with_inline_data():
    parts = [b"hello ", b"dag-pb ", b"leaves"]
    leaves = [
        encode_node(PBNode(data=encode_unixfs(UnixFSData(UnixFSType.FILE, p, len(p)))))
        for p in parts
    ]
    children = [(pb_cid(leaf, v0=True), len(p)) for leaf, p in zip(leaves, parts, strict=True)]
    node = file_node(children, data=b">> ")
    root = pb_cid(node, v0=True)
    assert cid_str(root).startswith("Qm")
    blocks = [(root, node), *((c, leaf) for (c, _), leaf in zip(children, leaves, strict=True))]
    assert assemble(root, blocks) == b">> hello dag-pb leaves"


def test_identity_cids_carry_their_bytes():
    inline = b"inline"
    identity = bytes.fromhex("015500") + encode_varint(len(inline)) + inline
    leaf = b"hashed"
    node = file_node([(identity, len(inline)), (raw_cid(leaf), len(leaf))])
    root = pb_cid(node)
    assert assemble(root, [(root, node), (raw_cid(leaf), leaf)]) == b"inlinehashed"


def test_cids_that_cannot_be_verified_are_refused():
    sha512 = bytes(multihash.digest(b"x", "sha2-512"))
    cid = bytes.fromhex("0155") + sha512
    with pytest.raises(DagError, match="only sha2-256 and identity"):
        parse_cid(cid)
    with pytest.raises(DagError, match="codec"):
        parse_cid(bytes.fromhex("01711220") + hashlib.sha256(b"x").digest())  # dag-cbor
    with pytest.raises(DagError, match="malformed"):
        parse_cid(bytes.fromhex("0155122001"))


# -- CarReader -----------------------------------------------------------------------------------


def test_car_sections_come_out_whatever_the_pieces_look_like():
    root, blocks = build(DATA)
    order = dfs(root, blocks)
    stream = car(root, order)
    for piece in (1, 7, 4096, len(stream)):
        reader = CarReader()
        got: list[Block] = []
        for i in range(0, len(stream), piece):
            got.extend(reader.feed(stream[i : i + piece]))
        reader.finish()
        assert reader.roots == [root]
        assert got == order


def test_car_v0_cids_and_empty_blocks():
    node = file_node([(raw_cid(b""), 0)])
    root = pb_cid(node, v0=True)
    stream = car(root, [(root, node), (raw_cid(b""), b"")])
    reader = CarReader()
    assert reader.feed(stream) == [(root, node), (raw_cid(b""), b"")]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (encode_varint(3) + b"\xff\xff\xff", "not dag-cbor"),
        (b"\x00", "header length 0"),
        (encode_varint(5000) + bytes(5000), "header length 5000"),
        (
            (lambda h: encode_varint(len(h)) + h)(
                dag_cbor.encode({"roots": [CID.decode("bafkqaaa")], "version": 2})
            ),
            "only version 1",
        ),
        (
            (lambda h: encode_varint(len(h)) + h)(dag_cbor.encode({"version": 1})),
            "exactly 'roots' and 'version'",
        ),
        (
            (lambda h: encode_varint(len(h)) + h)(dag_cbor.encode({"roots": [], "version": 1})),
            "non-empty list",
        ),
    ],
)
def test_car_headers_are_read_strictly(stream: bytes, message: str):
    with pytest.raises(CarFormatError, match=message):
        CarReader().feed(stream)


def test_car_sections_are_bounded_and_well_formed():
    header = car(raw_cid(b""), [])
    with pytest.raises(CarFormatError, match="bound"):
        CarReader().feed(header + encode_varint(MAX_SECTION_SIZE + 1))
    with pytest.raises(CarFormatError, match=r"is 0 bytes"):
        CarReader().feed(header + b"\x00")
    with pytest.raises(CarFormatError, match="CID version 2"):
        CarReader().feed(header + encode_varint(40) + b"\x02\x55\x12\x20" + bytes(36))
    with pytest.raises(CarFormatError, match="not minimally encoded"):
        CarReader().feed(header + b"\x85\x00")
    reader = CarReader()
    reader.feed(header + encode_varint(40) + b"\x01\x55")
    with pytest.raises(CarFormatError, match="ended inside section 0"):
        reader.finish()
    with pytest.raises(CarFormatError, match="before its header"):
        CarReader().finish()


# -- LeafPlanner + LeafVerifier: the file stream checked leaf by leaf ------------------------------


def plan(root: bytes, blocks: list[Block], max_size: int = 1 << 30) -> list[tuple[bytes, int]]:
    by_cid = dict(blocks)
    planner = LeafPlanner(root, max_size)
    while wanted := planner.wanted():
        for cid in wanted:
            planner.add_node(cid, by_cid[cid])
    return planner.leaves()


def stream_check(root: bytes, leaves: list[tuple[bytes, int]], stream: bytes, piece: int) -> bytes:
    with tempfile.TemporaryFile() as out:
        verifier = LeafVerifier(cid_str(root), leaves, FileSink(out))
        for i in range(0, len(stream), piece):
            verifier.feed([stream[i : i + piece]])
        assert verifier.done and verifier.offset == len(stream)
        out.seek(0)
        return out.read()


def test_the_file_stream_is_checked_range_by_range_against_its_raw_leaves():
    root, blocks = build(DATA)
    leaves = plan(root, blocks)
    assert [size for _, size in leaves] == [1000] * 20
    assert all(cid[:4] == RAW_PREFIX for cid, _ in leaves)
    for piece in (1, 999, 4096, len(DATA)):
        assert stream_check(root, leaves, DATA, piece) == DATA
    zeros = bytes(50_000)  # the same leaf many times: each range checked
    zroot, zblocks = build(zeros)
    assert stream_check(zroot, plan(zroot, zblocks), zeros, 7000) == zeros


def test_a_flipped_byte_in_the_file_stream_names_the_leaf():
    root, blocks = build(DATA)
    leaves = plan(root, blocks)
    bad = bytearray(DATA)
    bad[12_345] ^= 0x10
    with pytest.raises(BlockMismatch) as exc:
        stream_check(root, leaves, bytes(bad), 4096)
    assert exc.value.cid == cid_str(leaves[12][0])  # bytes 12000..12999
    assert "file offset 12000" in str(exc.value)
    with pytest.raises(DagError, match="more than the 20000 bytes"):
        stream_check(root, leaves, DATA + b"!", 4096)


def test_a_stream_that_stops_goes_on_from_the_last_whole_leaf():
    root, blocks = build(DATA)
    leaves = plan(root, blocks)
    with tempfile.TemporaryFile() as out:
        verifier = LeafVerifier("x", leaves, FileSink(out))
        verifier.feed([DATA[:2500]])
        assert verifier.offset == 2000 and verifier.next_leaf() == leaves[2][0]
        verifier.restart()  # the partial third leaf is dropped
        verifier.supply(leaves[2][0], DATA[2000:3000])  # the third leaf, as a block
        verifier.feed([DATA[3000:]])
        assert verifier.done
        out.seek(0)
        assert out.read() == DATA
        with pytest.raises(ValueError):
            verifier.supply(leaves[0][0], DATA[:1000])


def test_layouts_without_raw_leaves_are_not_planned():
    parts = [b"hello ", b"dag-pb ", b"leaves"]
    leaves = [
        encode_node(PBNode(data=encode_unixfs(UnixFSData(UnixFSType.FILE, p, len(p)))))
        for p in parts
    ]
    children = [(pb_cid(leaf, v0=True), len(p)) for leaf, p in zip(leaves, parts, strict=True)]
    node = file_node(children)
    root = pb_cid(node, v0=True)
    planner = LeafPlanner(root, 1 << 20)
    planner.add_node(root, node)
    with pytest.raises(NotPlannable):
        planner.add_node(children[0][0], leaves[0])  # a dag-pb leaf
    inline = file_node([(raw_cid(b"x"), 1)], data=b"inline ")
    with pytest.raises(NotPlannable):
        LeafPlanner(pb_cid(inline), 1 << 20).add_node(pb_cid(inline), inline)


def test_the_plan_checks_blocks_sizes_and_bounds():
    root, blocks = build(DATA)
    planner = LeafPlanner(root, len(DATA) - 1)
    with pytest.raises(DagTooLarge):
        planner.add_node(root, dict(blocks)[root])
    by_cid = dict(blocks)
    planner = LeafPlanner(root, 1 << 20)
    bad = bytearray(by_cid[root])
    bad[-1] ^= 1
    with pytest.raises(BlockMismatch):
        planner.add_node(root, bytes(bad))
    leaf = b"a" * 100
    inner = file_node([(raw_cid(leaf), 100)])
    outer = file_node([(pb_cid(inner), 99)])  # the parent says 99 bytes below
    planner = LeafPlanner(pb_cid(outer), 1 << 20)
    planner.add_node(pb_cid(outer), outer)
    planner.add_node(pb_cid(inner), inner)
    with pytest.raises(DagError, match="its parent says 99"):
        planner.leaves()
    missing = LeafPlanner(pb_cid(outer), 1 << 20)
    missing.add_node(pb_cid(outer), outer)
    with pytest.raises(DagError, match="is missing"):
        missing.leaves()
