"""A strict, incremental reader for CARv1 streams (``ipfs dag export``).

A CARv1 file is a varint-prefixed header (a dag-cbor map ``{"roots": [CID, ...], "version":
1}``) followed by sections, each a varint length and then a binary CID and the block's bytes
(https://ipld.io/specs/transport/car/carv1/). :class:`CarReader` takes the stream in pieces of
any size (as they come off the network) and hands out complete ``(cid, block)`` sections; it
holds at most one incomplete section. It does not trust the stream: lengths are bounded, the
header must be exactly a CARv1 header, and each CID must be well formed. It does *not* check
that a block matches its CID: that is the caller's job (``registry.dag_verify``), because only
the caller knows which blocks it asked for.

Varints are read with ``multiformats.varint`` (which rejects non-minimal encodings) and the
header with the ``dag-cbor`` codec.
"""

from __future__ import annotations

import dag_cbor
from multiformats import CID, varint

from registry.dagpb import MAX_BLOCK_SIZE

MAX_HEADER_SIZE = 4096
"""Largest CAR header accepted (a header naming one root is under 64 bytes)."""

MAX_DIGEST_SIZE = 64
"""Longest multihash digest accepted in a section's CID (sha2-512 is 64 bytes)."""

MAX_CID_SIZE = 4 + 4 + MAX_DIGEST_SIZE
"""Upper bound on a binary CID's length: four short varints and the digest."""

MAX_SECTION_SIZE = MAX_CID_SIZE + MAX_BLOCK_SIZE
"""Largest section (CID + block) accepted."""

_MAX_VARINT_BYTES = 9  # multiformats' limit, enough for any 63-bit length


class CarFormatError(ValueError):
    """The stream is not a well-formed CARv1 (the message says where and why)."""


def _read_varint(
    buf: bytes | bytearray | memoryview, pos: int, what: str
) -> tuple[int, int] | None:
    """``(value, next_pos)`` for the varint at ``pos``; ``None`` when more bytes are needed."""
    end = min(len(buf), pos + _MAX_VARINT_BYTES)
    for i in range(pos, end):
        if not buf[i] & 0x80:
            break
    else:
        if end - pos < _MAX_VARINT_BYTES:
            return None
    try:
        # A bytes copy of at most 9 bytes: decode_raw keeps a reference to its argument in a
        # reference cycle, which would pin (and forbid resizing) the caller's buffer.
        value, size, _ = varint.decode_raw(bytes(buf[pos:end]))
    except ValueError as exc:
        raise CarFormatError(f"bad {what} at offset {pos}: {exc}") from None
    return value, pos + size


def cid_length(buf: bytes | bytearray | memoryview, what: str = "CID") -> int:
    """Length of the binary CID at the start of ``buf`` (which must hold all of it).

    CIDv0 is a bare sha2-256 multihash (``0x12 0x20`` + 32 bytes); CIDv1 is version, codec,
    multihash code, digest length and digest. Raises :class:`CarFormatError` otherwise.
    """
    if len(buf) >= 2 and buf[0] == 0x12 and buf[1] == 0x20:
        if len(buf) < 34:
            raise CarFormatError(f"truncated CIDv0 in {what}")
        return 34
    pos = 0
    fields: list[int] = []
    for name in ("version", "codec", "multihash code", "digest length"):
        got = _read_varint(buf, pos, f"{what} {name}")
        if got is None:
            raise CarFormatError(f"truncated {what}")
        value, pos = got
        fields.append(value)
    version, _codec, _code, digest_len = fields
    if version != 1:
        raise CarFormatError(f"{what} has CID version {version}; only 0 and 1 exist")
    if digest_len > MAX_DIGEST_SIZE:
        raise CarFormatError(f"{what} declares a {digest_len}-byte digest")
    if pos + digest_len > len(buf):
        raise CarFormatError(f"truncated digest in {what}")
    return pos + digest_len


def parse_header(raw: bytes) -> list[bytes]:
    """Decode a CARv1 header strictly; return its roots as binary CIDs."""
    try:
        header = dag_cbor.decode(raw)
    except Exception as exc:  # the codec raises its own error types
        raise CarFormatError(f"CAR header is not dag-cbor: {exc}") from None
    if not isinstance(header, dict) or set(header) != {"roots", "version"}:
        raise CarFormatError("CAR header must be a map with exactly 'roots' and 'version'")
    if header["version"] != 1:
        raise CarFormatError(f"CAR version {header['version']!r}; only version 1 is read")
    roots = header["roots"]
    if not isinstance(roots, list) or not roots or not all(isinstance(r, CID) for r in roots):
        raise CarFormatError("CAR header 'roots' must be a non-empty list of CIDs")
    return [bytes(r) for r in roots]


class CarReader:
    """Incremental CARv1 parser; see the module docstring.

    ``feed(data)`` returns the sections completed by ``data`` as ``(cid, block)`` pairs of
    ``bytes``; ``roots`` is set once the header has been read; ``finish()`` raises when the
    stream stopped inside the header or a section.
    """

    __slots__ = ("_buf", "bytes_read", "roots", "sections")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.roots: list[bytes] | None = None
        self.bytes_read = 0
        self.sections = 0

    @property
    def header_read(self) -> bool:
        return self.roots is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
        self.bytes_read += len(data)
        buf = self._buf
        buf += data
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        if self.roots is None:
            got = _read_varint(buf, 0, "CAR header length")
            if got is None:
                return out
            length, start = got
            if not 0 < length <= MAX_HEADER_SIZE:
                raise CarFormatError(f"CAR header length {length} is out of bounds")
            if len(buf) < start + length:
                return out
            self.roots = parse_header(bytes(buf[start : start + length]))
            pos = start + length
        n = len(buf)
        while pos < n:
            got = _read_varint(buf, pos, "CAR section length")
            if got is None:
                break
            length, start = got
            if not 0 < length <= MAX_SECTION_SIZE:
                raise CarFormatError(
                    f"CAR section {self.sections} is {length} bytes; the bound is "
                    f"{MAX_SECTION_SIZE}"
                )
            end = start + length
            if end > n:
                break
            with memoryview(buf) as view:
                section = view[start:end]
                size = cid_length(section[:MAX_CID_SIZE], f"CAR section {self.sections} CID")
                out.append((bytes(section[:size]), bytes(section[size:])))
                section.release()
            self.sections += 1
            pos = end
        if pos:
            del buf[:pos]
        return out

    def finish(self) -> None:
        """Raise :class:`CarFormatError` when bytes of an incomplete header or section remain."""
        if self.roots is None:
            raise CarFormatError("the CAR stream ended before its header")
        if self._buf:
            raise CarFormatError(
                f"the CAR stream ended inside section {self.sections} "
                f"({len(self._buf)} bytes of it)"
            )
