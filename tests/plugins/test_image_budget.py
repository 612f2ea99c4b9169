"""Images are charged for the memory their decoding takes, not only for their pixel count:
a 16-bit or alpha image of a few KiB and many megapixels is refused from its header, and the
conversion of a 16-bit image never builds arrays larger than its 8-bit result."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocessing import ImagePayload, InputTooLarge, Limits
from preprocessing.image import image_bytes
from tests.plugins.test_preprocessing import image_model

MEASURED = (7000, 5672)  # 39.7 MP
STATUS = Path("/proc/self/status")


def png(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    """A PNG of zeros, written row by row (never held decoded): a few KiB for many MP."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\0" * (1 + width * channels * bit_depth // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _status_kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in {STATUS}")


def peak_rss_growth(fn) -> tuple[BaseException | None, int]:
    """What ``fn`` raised and how far the process's peak RSS rose above its RSS before
    (bytes): native allocations (Pillow's) included."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from the RSS now
    before = _status_kib("VmRSS")
    try:
        fn()
        raised: BaseException | None = None
    except Exception as exc:
        raised = exc
    return raised, (_status_kib("VmHWM") - before) << 10


@pytest.fixture(scope="module")
def grey16_bomb() -> bytes:
    data = png(*MEASURED, 16, 0)
    assert len(data) < 100 << 10
    return data


def test_charges_follow_the_mode():
    assert image_bytes("L", 1000, 1000) == 1_000_000
    assert image_bytes("RGB", 1000, 1000) == 4_000_000
    assert image_bytes("I;16", 1000, 1000) == 3_000_000  # decoded + 8-bit grey
    assert image_bytes("RGBA", 1000, 1000) == 8_000_000  # decoded + RGB
    assert image_bytes("P", 1000, 1000) == 5_000_000
    assert image_bytes("RGB", 1000, 1000, transposed=True) == 8_000_000
    # The default budget takes a 40 MP RGB image, the pixel limit's own case.
    assert image_bytes("RGB", 8000, 5000) <= Limits().max_image_bytes


def test_16_bit_alpha_png_of_many_mp_is_413_from_its_header_at_defaults():
    data = png(*MEASURED, 16, 4)  # 16-bit grey + alpha: Pillow decodes it as RGBA
    assert len(data) < 400 << 10
    pre = image_model(size=(224, 224))
    raised, grown = peak_rss_growth(lambda: pre(ImagePayload(data)))
    assert isinstance(raised, InputTooLarge), raised
    assert "7000x5672" in str(raised) and "CIDSERVE_MAX_IMAGE_BYTES" in str(raised)
    assert grown < 20 << 20, f"peak RSS rose {grown >> 20} MiB"


def test_the_measured_16_bit_png_is_413_under_a_budget_without_decoding(grey16_bomb: bytes):
    pre = image_model(size=(224, 224), limits=Limits(max_image_bytes=64 << 20))
    raised, grown = peak_rss_growth(lambda: pre(ImagePayload(grey16_bomb)))
    assert isinstance(raised, InputTooLarge), raised
    assert "I;16" in str(raised) and str(MEASURED[0] * MEASURED[1] * 3) in str(raised)
    assert grown < 20 << 20, f"peak RSS rose {grown >> 20} MiB"


def test_the_budget_counts_bytes_per_pixel_not_pixels():
    pre = image_model(size=(224, 224), limits=Limits(max_image_bytes=16 << 20))  # 16.8 MB
    size = (3000, 2000)  # 6 MP, far under the pixel limit
    assert pre(ImagePayload(png(*size, 8, 0))).feeds["x"].shape == (1, 3, 224, 224)  # 6 MB
    for bit_depth, color_type in ((16, 0), (8, 6), (16, 6)):  # 18 MB, 48 MB, 48 MB
        with pytest.raises(InputTooLarge, match="CIDSERVE_MAX_IMAGE_BYTES"):
            pre(ImagePayload(png(*size, bit_depth, color_type)))


def test_16_bit_conversion_builds_no_full_size_intermediate():
    height, width = 3000, 4000
    grey = ((np.arange(width)[None, :] * 13 + np.arange(height)[:, None] * 7) % 65536).astype(
        np.uint16
    )
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    pre = image_model(size=(224, 224))
    tracemalloc.start()
    try:
        out = pre(ImagePayload(buf.getvalue())).feeds["x"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy's share of the work: strips, not the 12 MP x 8 bytes the int64 image would take.
    assert peak < 8 << 20, f"numpy allocated {peak >> 20} MiB"
    # The same pixels as scaling to 8 bits first and decoding an RGB image.
    rgb = Image.fromarray((grey >> 8).astype(np.uint8)).convert("RGB")
    ref = io.BytesIO()
    rgb.save(ref, "PNG")
    np.testing.assert_allclose(out, pre(ImagePayload(ref.getvalue())).feeds["x"], atol=1e-6)
