"""CIDs as ``ipfs add --cid-version=1`` computes them, and the dag-pb / UnixFS codecs.

Reference CIDs were produced with the reference JavaScript importer, outside this repository:

    npm install ipfs-unixfs-importer@17.1.1 blockstore-core@7.0.1   (Node 20.20;
        pulls @ipld/dag-pb 4.2.0, ipfs-unixfs 13.1.1, multiformats 14.0.5)

    importer([{ content }], new MemoryBlockstore(), {
      cidVersion: 1, rawLeaves: true, reduceSingleLeafToSelf: true,
      chunker: fixedSize({ chunkSize: 262144 }),
      layout: balanced({ maxChildrenPerNode: 174 }),
    })

with ``content`` = n bytes where byte i is ``i % 251`` (``pattern(n)`` below), fed in 1 MiB
pieces. These are the options Kubo's ``ipfs add --cid-version=1`` implies. The
``SMALL_TREE_REFS`` come from the same script with ``chunkSize: 1000`` and
``maxChildrenPerNode: 3``, to check deep trees cheaply. The root-block hex dumps are the bytes
the importer stored for the root CID.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
from pathlib import Path

import pytest
from multiformats import CID, multihash

from registry.dagpb import MAX_BLOCK_SIZE, PBLink, PBNode, decode_node, encode_node
from registry.protobuf import decode_varint, encode_varint
from registry.unixfs import (
    CHUNK_SIZE,
    DAG_PB_PREFIX,
    MAX_LINKS,
    RAW_PREFIX,
    UnixFSBuilder,
    canonical_cid,
    cid_of_bytes,
    cid_of_file,
    cid_to_str,
)
from registry.unixfs_data import UnixFSData, UnixFSType, decode_unixfs, encode_unixfs

KIB = 1024
MIB = 1024 * KIB

REFERENCE_CIDS = {
    0: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    1: "bafkreidogqfzz75tpkmjzjke425xqcrmpcib2p5tg44hnbirumdbpl5adu",
    256 * KIB: "bafkreibruh455iawsviqslif5c7uurdcfdemh22mtnytyzvnzn75kpejxy",
    256 * KIB + 1: "bafybeiexg2oqkfnj56l7fcmawswqbijt5shq4b5rg6a546uwpkqqzwjioi",
    5 * MIB: "bafybeihqelb6aubsafst7trdwenmqtqrwg3k2yijt43wridokfoxkka3aq",
    50 * MIB: "bafybeib36v34v7aqrbffbhtongtcq3xseakzlsoddoblzg3tykpepq5gt4",
}

# Cumulative DAG size (the importer's ``size``: every block's bytes, as in the root's Tsize).
REFERENCE_DAG_SIZES = {256 * KIB + 1: 262249, 5 * MIB: 5243889, 50 * MIB: 52438932}

# Root block of the 256 KiB + 1 B file: two links (Name "" present), then UnixFS File data.
ROOT_BLOCK_256K_PLUS_1 = bytes.fromhex(
    "122c0a240155122031a1f9dea0169551092d05e8bf4a446228c8c3eb4c9b713c66adcb7fd53c89be1200188080"
    "10122a0a240155122018ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e412001801"
    "0a0c080218818010208080102001"
)

# chunkSize 1000, maxChildrenPerNode 3: sizes around 1, 3, 9 and 27+ leaves (up to 4 levels).
SMALL_TREE_REFS = {
    1000: "bafkreicojquuwmy7piqjti3zx3buxh47ya64i2vumxmzr5gwqpnfgsd6nu",
    1001: "bafybeif5mb4zbtesgix6bqhowo2psydj735chwxw2pdiet2tm5n2rmt7lu",
    3000: "bafybeibxl7tuhwjspkoezlgf2xjsmmk25xmsx2egyaq5nqmyojhyl7md24",
    3001: "bafybeiahphcd6qk7qreuk5xetgjzpnxfi7tdnhxfzts66fqc2ou7blf34a",
    9000: "bafybeihhqrwnlsxyjh7ruaimuzor6k6xwyrz7eh6wvbjwkhh7yy3flbaa4",
    9001: "bafybeiffuzmpxbxl3d4wthgl7xxwyyn2gnlwipmbzbw4iy2qajlzxqslhe",
    29999: "bafybeifmaemzdccwihvwnk7expt6jqsyl7xss6nueetx6e3s4qjtehddze",
    30000: "bafybeib52cxv6dhfx555luyollut6zsgsntigfqzmzas6pozt6aaef3yp4",
}
# Root block for 3001 bytes with those settings: links to two dag-pb nodes.
ROOT_BLOCK_SMALL_3001 = bytes.fromhex(
    "122b0a2401701220375fe743d9327a9c4cacc5d5d326315aedd92be886c021d6c198724f85fd83d7120018cf18"
    "122a0a2401701220c0c0fcaf8d941006780a37ade1f208d462f3e7feadd1800fb6b9b9f41605e649120018350a"
    "0a080218b91720b8172001"
)

_PERIOD = bytes(range(251))


def pattern(n: int) -> bytes:
    """n bytes where byte i is i % 251 (the reference importer's input)."""
    return (_PERIOD * (n // 251 + 1))[:n]


def raw_cid_by_hand(data: bytes) -> str:
    """CIDv1(raw, sha2-256) in base32 from first principles: 0x01 0x55 0x12 0x20 + digest."""
    binary = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(binary).decode().rstrip("=").lower()


# --------------------------------------------------------------------------------------------
# CIDs against the reference importer


@pytest.mark.parametrize("size", sorted(REFERENCE_CIDS))
def test_cid_of_file_matches_reference_importer(tmp_path: Path, size: int) -> None:
    path = tmp_path / "content.bin"
    path.write_bytes(pattern(size))
    assert cid_of_file(path) == REFERENCE_CIDS[size]


@pytest.mark.parametrize("size", [0, 1, 256 * KIB, 256 * KIB + 1, 5 * MIB])
def test_cid_of_bytes_matches_reference_importer(size: int) -> None:
    assert cid_of_bytes(pattern(size)) == REFERENCE_CIDS[size]


def test_empty_and_one_byte_cids_derived_by_hand() -> None:
    # The empty file and a one-byte file are single raw leaves: CIDv1 raw of their sha2-256.
    assert raw_cid_by_hand(b"") == REFERENCE_CIDS[0]
    assert hashlib.sha256(b"").hexdigest().startswith("e3b0c442")
    assert raw_cid_by_hand(b"\x00") == REFERENCE_CIDS[1]
    assert cid_of_bytes(b"") == REFERENCE_CIDS[0]
    assert cid_of_bytes(b"\x00") == REFERENCE_CIDS[1]
    # One full chunk is still a single raw leaf.
    assert raw_cid_by_hand(pattern(CHUNK_SIZE)) == REFERENCE_CIDS[256 * KIB]


def test_root_block_bytes_match_reference_importer() -> None:
    blocks: dict[str, bytes] = {}
    builder = UnixFSBuilder(on_block=lambda cid, block: blocks.__setitem__(cid, block))
    builder.update(pattern(CHUNK_SIZE + 1))
    root = builder.finish()
    assert blocks[root] == ROOT_BLOCK_256K_PLUS_1
    assert len(blocks) == 3
    assert sum(len(b) for b in blocks.values()) == REFERENCE_DAG_SIZES[256 * KIB + 1]


def test_fifty_mib_builds_a_two_level_tree() -> None:
    size = 50 * MIB
    blocks: dict[str, bytes] = {}
    builder = UnixFSBuilder(on_block=lambda cid, block: blocks.__setitem__(cid, block))
    data = pattern(size)
    view = memoryview(data)
    for start in range(0, size, 3 * MIB + 17):  # uneven pieces across chunk boundaries
        builder.update(view[start : start + 3 * MIB + 17])
    root = builder.finish()
    assert root == REFERENCE_CIDS[size]
    assert builder.size == size
    leaves = size // CHUNK_SIZE
    assert leaves == 200 > MAX_LINKS
    assert len(blocks) == leaves + 2 + 1  # 200 raw leaves, 2 intermediate nodes, the root
    assert sum(len(b) for b in blocks.values()) == REFERENCE_DAG_SIZES[size]

    node = decode_node(blocks[root])
    assert len(node.links) == 2
    assert node.data is not None
    meta = decode_unixfs(node.data)
    assert meta.type is UnixFSType.FILE
    assert meta.filesize == size
    assert meta.blocksizes == (174 * CHUNK_SIZE, 26 * CHUNK_SIZE)
    children = [decode_node(blocks[cid_to_str(link.hash)]) for link in node.links]
    assert [len(child.links) for child in children] == [174, 26]
    assert all(link.hash.startswith(RAW_PREFIX) for c in children for link in c.links)
    assert all(link.hash.startswith(DAG_PB_PREFIX) for link in node.links)
    assert node.links[0].tsize == len(encode_node(children[0])) + 174 * CHUNK_SIZE


@pytest.mark.parametrize("size", sorted(SMALL_TREE_REFS))
def test_deep_trees_match_reference_importer(size: int) -> None:
    data = pattern(size)
    builder = UnixFSBuilder(chunk_size=1000, max_links=3)
    for start in range(0, size, 7):
        builder.update(data[start : start + 7])
    assert builder.finish() == SMALL_TREE_REFS[size]


def test_small_tree_root_block_matches_reference_importer() -> None:
    blocks: dict[str, bytes] = {}
    builder = UnixFSBuilder(
        on_block=lambda cid, block: blocks.__setitem__(cid, block), chunk_size=1000, max_links=3
    )
    builder.update(pattern(3001))
    assert blocks[builder.finish()] == ROOT_BLOCK_SMALL_3001


def test_piecewise_updates_equal_one_shot() -> None:
    data = pattern(3 * CHUNK_SIZE + 12345)
    rng = random.Random(7)
    builder = UnixFSBuilder()
    pos = 0
    while pos < len(data):
        step = rng.choice([0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 70000])
        builder.update(bytearray(data[pos : pos + step]))
        pos += step
    assert builder.finish() == cid_of_bytes(data)


def test_blocks_are_emitted_leaves_first_root_last_and_hash_to_their_cids() -> None:
    emitted: list[tuple[str, bytes]] = []
    builder = UnixFSBuilder(on_block=lambda cid, block: emitted.append((cid, block)))
    builder.update(pattern(5 * MIB))
    root = builder.finish()
    assert emitted[-1][0] == root
    assert len(emitted) == 21
    for cid, block in emitted:
        parsed = CID.decode(cid)
        assert parsed.version == 1
        assert parsed.raw_digest == hashlib.sha256(block).digest()
        assert parsed.codec.name == ("dag-pb" if cid == root else "raw")


def test_builder_lifecycle() -> None:
    builder = UnixFSBuilder()
    builder.update(b"abc")
    first = builder.finish()
    assert builder.finish() == first
    with pytest.raises(RuntimeError):
        builder.update(b"more")
    with pytest.raises(ValueError):
        UnixFSBuilder(chunk_size=0)
    with pytest.raises(ValueError):
        UnixFSBuilder(max_links=1)


# --------------------------------------------------------------------------------------------
# CID strings


def test_cid_to_str_matches_multiformats() -> None:
    digest = hashlib.sha256(b"x").digest()
    for prefix, codec in ((RAW_PREFIX, "raw"), (DAG_PB_PREFIX, "dag-pb")):
        expected = CID("base32", 1, codec, multihash.wrap(digest, "sha2-256"))
        assert cid_to_str(prefix + digest) == str(expected)


def test_canonical_cid() -> None:
    cid = REFERENCE_CIDS[5 * MIB]
    assert canonical_cid(cid) == cid
    assert canonical_cid(cid.upper()) == cid  # multibase "B": upper-case base32
    v0 = str(CID.decode(cid).set(version=0, base="base58btc"))
    assert v0.startswith("Qm")
    assert canonical_cid(v0) == cid
    base58_v1 = str(CID.decode(cid).set(base="base58btc"))
    assert canonical_cid(base58_v1) == cid
    for garbage in ["", "../../etc/passwd", "bafy", "Qm", "hello world", cid + "/../x", "b" * 300]:
        with pytest.raises(ValueError, match="not a CID"):
            canonical_cid(garbage)


# --------------------------------------------------------------------------------------------
# dag-pb and UnixFS codecs


def test_varint_round_trip_and_bounds() -> None:
    for value in [0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1]:
        encoded = encode_varint(value)
        assert decode_varint(encoded, 0) == (value, len(encoded))
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(2**64)
    with pytest.raises(ValueError, match="truncated"):
        decode_varint(b"\x80\x80", 0)
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        decode_varint(b"\xff" * 11 + b"\x01", 0)
    with pytest.raises(ValueError, match="exceeds 64 bits"):
        decode_varint(b"\xff" * 9 + b"\x7f", 0)


LINK_CID = RAW_PREFIX + hashlib.sha256(b"child").digest()


@pytest.mark.parametrize(
    "node",
    [
        PBNode(),
        PBNode(data=b""),
        PBNode(data=b"payload"),
        PBNode(links=(PBLink(LINK_CID),)),
        PBNode(
            links=(
                PBLink(LINK_CID, "", 0),
                PBLink(LINK_CID, "naïve.onnx", 2**40),
                PBLink(bytes([0x12, 0x20]) + bytes(32), None, 5),  # CIDv0 link
            ),
            data=encode_unixfs(UnixFSData(UnixFSType.DIRECTORY)),
        ),
    ],
)
def test_dagpb_round_trip(node: PBNode) -> None:
    block = encode_node(node)
    assert decode_node(block) == node
    assert encode_node(decode_node(block)) == block


def test_dagpb_decodes_reference_blocks() -> None:
    node = decode_node(ROOT_BLOCK_256K_PLUS_1)
    assert [(link.name, link.tsize) for link in node.links] == [("", CHUNK_SIZE), ("", 1)]
    assert all(link.hash.startswith(RAW_PREFIX) for link in node.links)
    assert node.data is not None
    assert decode_unixfs(node.data) == UnixFSData(
        UnixFSType.FILE, filesize=CHUNK_SIZE + 1, blocksizes=(CHUNK_SIZE, 1)
    )
    assert encode_node(node) == ROOT_BLOCK_256K_PLUS_1


def test_dagpb_links_are_written_before_data() -> None:
    block = encode_node(PBNode(links=(PBLink(LINK_CID, "", 1),), data=b"d"))
    assert block[0] == 0x12  # field 2 (Links), length-delimited
    assert block.endswith(b"\x0a\x01d")  # field 1 (Data) last


def test_dagpb_accepts_data_before_links() -> None:
    link = encode_node(PBNode(links=(PBLink(LINK_CID, "", 1),)))
    data = encode_node(PBNode(data=b"d"))
    node = decode_node(data + link + link)
    assert node.data == b"d"
    assert len(node.links) == 2


def _link_bytes(body: bytes) -> bytes:
    return b"\x12" + encode_varint(len(body)) + body


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x1a\x00", "unknown field 3"),
        (b"\x08\x01", "wire type 0"),
        (b"\x0a\x01a\x0a\x01b", "duplicate Data"),
        (
            encode_node(PBNode(links=(PBLink(LINK_CID),)))
            + b"\x0a\x00"
            + encode_node(PBNode(links=(PBLink(LINK_CID),))),
            "Links field after Data",
        ),
        (_link_bytes(b"\x12\x00\x0a\x24" + LINK_CID), "out-of-order field 1"),
        (_link_bytes(b"\x12\x00"), "missing Hash"),
        (_link_bytes(b"\x0a\x24" + LINK_CID + b"\x0a\x24" + LINK_CID), "duplicate field 1"),
        (_link_bytes(b"\x0a\x03\x01\x55\x12"), "CID"),
        (_link_bytes(b"\x0a\x05\x02\x55\x12\x01\x00"), "unsupported CID version"),
        (_link_bytes(b"\x0a\x24" + LINK_CID + b"\x12\x02\xff\xfe"), "UTF-8"),
        (_link_bytes(b"\x0a\x24" + LINK_CID + b"\x22\x00"), "unknown field 4"),
        (b"\x0a\x05abc", "truncated PBNode.Data"),
        (b"\x0a", "truncated PBNode.Data length"),
        (b"\x12\x10\x0a", "truncated PBNode.Links"),
        (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 10 bytes"),
        (b"\x02\x00", "field number 0"),
        (b"\x0a" + encode_varint(MAX_BLOCK_SIZE) + bytes(MAX_BLOCK_SIZE), "more than"),
    ],
)
def test_dagpb_rejects_malformed_blocks(block: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_node(block)


def test_dagpb_truncations_are_rejected_or_canonical() -> None:
    # A prefix of a block is either refused or (cut exactly between links) a canonical node.
    for block in (ROOT_BLOCK_256K_PLUS_1, ROOT_BLOCK_SMALL_3001):
        for cut in range(len(block)):
            try:
                node = decode_node(block[:cut])
            except ValueError:
                continue
            assert encode_node(node) == block[:cut]


def test_dagpb_random_input_raises_only_value_error() -> None:
    rng = random.Random(1234)
    seeds = [ROOT_BLOCK_256K_PLUS_1, ROOT_BLOCK_SMALL_3001]
    for i in range(3000):
        if i % 2:
            block = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                block[rng.randrange(len(block))] = rng.randrange(256)
        else:
            block = bytearray(rng.randbytes(rng.randint(0, 64)))
        try:
            node = decode_node(bytes(block))
        except ValueError:
            continue
        for payload in (node.data, bytes(block)):
            if payload is not None:
                with contextlib.suppress(ValueError):
                    decode_unixfs(payload)


def test_unixfs_round_trip() -> None:
    messages = [
        UnixFSData(UnixFSType.FILE, filesize=0),
        UnixFSData(UnixFSType.FILE, data=b"inline", filesize=6),
        UnixFSData(UnixFSType.FILE, filesize=2**40, blocksizes=(2**39, 2**39)),
        UnixFSData(UnixFSType.RAW, data=b""),
        UnixFSData(UnixFSType.HAMT_SHARD, hash_type=0x22, fanout=256),
        UnixFSData(UnixFSType.FILE, mode=0o644, mtime=(1_700_000_000, 5)),
        UnixFSData(UnixFSType.DIRECTORY, mtime=(-1, None)),
    ]
    for msg in messages:
        assert decode_unixfs(encode_unixfs(msg)) == msg


def test_unixfs_accepts_packed_blocksizes() -> None:
    packed = b"\x08\x02\x18\x03\x22\x02\x01\x02"  # Type=File, filesize=3, blocksizes=[1, 2]
    assert decode_unixfs(packed).blocksizes == (1, 2)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "missing Type"),
        (b"\x18\x01", "missing Type"),
        (b"\x08\x09", "unknown Type 9"),
        (b"\x08\x02\x08\x02", "duplicate Type"),
        (b"\x08\x02\x18\x01\x18\x01", "duplicate filesize"),
        (b"\x08\x02\x12\x05ab", "truncated UnixFS Data.Data"),
        (b"\x08\x02\x4a\x00", "unknown field 9"),
        (b"\x08\x02\x1a\x00", "wire type 2"),
        (b"\x08\x02\x25\x00\x00\x00\x00", "blocksizes: wire type 5"),
        (b"\x08\x02\x22\x01\x80", "truncated UnixFS Data.blocksizes"),
        (b"\x08\x02\x38\x80\x80\x80\x80\x10", "mode out of range"),
        (b"\x08\x02\x42\x00", "missing Seconds"),
        (b"\x08\x02\x42\x03\x15\x00\x00", "truncated UnixTime"),
        (b"\x08\x02\x42\x07\x08\x01\x15\xff\xff\xff\xff", "out of range"),
        (b"\x08", "truncated"),
    ],
)
def test_unixfs_rejects_malformed_messages(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_unixfs(payload)
