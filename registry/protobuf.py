"""Protobuf wire-format primitives for the strict codecs of ``registry.dagpb`` and
``registry.unixfs_data``: varints, field keys and length-delimited fields, written canonically
and read back bounded (a truncated, overlong or oversized value raises ``ValueError`` naming
what it is).
"""

from __future__ import annotations

MAX_UINT64 = (1 << 64) - 1
WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_BYTES = 2
WIRE_FIXED32 = 5


def encode_varint(value: int) -> bytes:
    """Encode an unsigned integer (< 2**64) as a protobuf varint."""
    if value < 0 or value > MAX_UINT64:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int, what: str = "varint") -> tuple[int, int]:
    """Read a varint at ``pos``; return ``(value, next_pos)``.

    Rejects varints that run past the end of ``buf``, are longer than 10 bytes or exceed 64 bits.
    """
    end = len(buf)
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise ValueError(f"truncated {what} at offset {start}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise ValueError(f"{what} at offset {start} is longer than 10 bytes")
    if result > MAX_UINT64:
        raise ValueError(f"{what} at offset {start} exceeds 64 bits")
    return result, pos


def field_key(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


def len_delimited(field: int, payload: bytes) -> bytes:
    return field_key(field, WIRE_BYTES) + encode_varint(len(payload)) + payload


def read_key(buf: memoryview, pos: int, message: str) -> tuple[int, int, int]:
    key, pos = decode_varint(buf, pos, f"{message} field key")
    field, wire_type = key >> 3, key & 7
    if field == 0:
        raise ValueError(f"{message}: field number 0 is invalid")
    return field, wire_type, pos


def read_bytes(buf: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    length, pos = decode_varint(buf, pos, f"{what} length")
    end = pos + length
    if end > len(buf):
        raise ValueError(f"truncated {what}: needs {length} bytes, {len(buf) - pos} left")
    return buf[pos:end], end


def expect_wire(message: str, name: str, wire_type: int, expected: int) -> None:
    if wire_type != expected:
        raise ValueError(f"{message}.{name}: wire type {wire_type}, expected {expected}")


def bounded_view(block: bytes | bytearray | memoryview, what: str, limit: int) -> memoryview:
    """``block`` as a byte view; ``ValueError`` when it is longer than ``limit``."""
    view = memoryview(block).cast("B")
    if len(view) > limit:
        raise ValueError(f"{what} is {len(view)} bytes, more than the {limit} allowed")
    return view
