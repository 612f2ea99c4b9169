"""Preprocessing kinds on real photos, tensors and feature objects."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

import preprocessing as pp
from postprocessing.score import ScorePostprocessing
from preprocessing import (
    FeaturesPayload,
    ImagePayload,
    InputTooLarge,
    Limits,
    PreprocessingError,
    TensorPayload,
    tensor_feeds,
)
from preprocessing.image_options import ImagePreprocessing, MeanStd, ScaleOffset
from preprocessing.tabular import Feature, TabularPreprocessing
from preprocessing.tensor import TensorPreprocessing
from registry.metadata import MetadataError, ModelMetadata, now_utc

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
IMAGENET = MeanStd(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def metadata(pre: Any, inputs: list[dict[str, Any]]) -> ModelMetadata:
    return ModelMetadata(
        name="test-model",
        version="1",
        model={"cid": CID, "size": 1, "sha256": "0" * 64, "opset": 17},
        inputs=inputs,
        outputs=[{"name": "y", "dtype": "float32", "shape": [1, 1]}],
        preprocessing=pre,
        postprocessing=ScorePostprocessing(),
        created_at=now_utc(),
    )


def image_model(
    shape: list[Any] | None = None,
    dtype: str = "float32",
    limits: Limits | None = None,
    **spec: Any,
) -> pp.Preprocessor:
    pre = ImagePreprocessing(**spec)
    h, w = pre.size
    if shape is None:
        shape = ["batch", 3, h, w] if pre.layout == "NCHW" else ["batch", h, w, 3]
    md = metadata(pre, [{"name": "x", "dtype": dtype, "shape": shape}])
    return pp.create(md, limits or Limits())


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return data.chelsea()  # 451 x 300 cat


@pytest.fixture(scope="module")
def astronaut_224() -> np.ndarray:
    return data.astronaut()[100:324, 150:374]  # 224 x 224 crop: no resampling at 224


# --- image: shapes, layouts, pixel values ---------------------------------------------------


@pytest.mark.parametrize("mode", ["shorter_side", "stretch", "letterbox"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_image_shape_layout_dtype(chelsea: np.ndarray, mode: str, layout: str, fmt: str) -> None:
    pre = image_model(size=(224, 192), resize_mode=mode, layout=layout, normalize=IMAGENET)
    out = pre(ImagePayload(encode(chelsea, fmt))).feeds["x"]
    assert out.shape == ((1, 3, 224, 192) if layout == "NCHW" else (1, 224, 192, 3))
    assert out.dtype == np.float32
    assert out.flags.c_contiguous


@pytest.mark.parametrize("mode", ["shorter_side", "stretch", "letterbox"])
def test_image_layouts_and_channel_orders_agree(chelsea: np.ndarray, mode: str) -> None:
    payload = ImagePayload(encode(chelsea))
    common = {"size": (160, 200), "resize_mode": mode, "normalize": ScaleOffset(scale=0.5)}
    nchw = image_model(layout="NCHW", **common)(payload).feeds["x"]
    nhwc = image_model(layout="NHWC", **common)(payload).feeds["x"]
    bgr = image_model(layout="NHWC", channel_order="BGR", **common)(payload).feeds["x"]
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(bgr, nhwc[..., ::-1])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_image_pixel_matches_hand_computation(
    astronaut_224: np.ndarray, layout: str, order: str
) -> None:
    pre = image_model(
        size=(224, 224),
        resize_mode="stretch",
        layout=layout,
        channel_order=order,
        normalize=IMAGENET,
    )
    out = pre(ImagePayload(encode(astronaut_224))).feeds["x"]
    y, x = 57, 131
    rgb = astronaut_224[y, x].astype(np.float64)
    pixel = rgb[::-1] if order == "BGR" else rgb  # metadata mean/std are in model order
    expected = (pixel / 255 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
    got = out[0, :, y, x] if layout == "NCHW" else out[0, y, x, :]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_image_scale_offset_on_0_255(astronaut_224: np.ndarray) -> None:
    pre = image_model(
        size=(224, 224), resize_mode="stretch", normalize=ScaleOffset(scale=1 / 128, offset=-1)
    )
    out = pre(ImagePayload(encode(astronaut_224))).feeds["x"]
    expected = astronaut_224.transpose(2, 0, 1) / 128 - 1
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_image_uint8_input_gets_raw_pixels(astronaut_224: np.ndarray) -> None:
    pre = image_model(size=(224, 224), resize_mode="stretch", layout="NHWC", dtype="uint8")
    out = pre(ImagePayload(encode(astronaut_224))).feeds["x"]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], astronaut_224)


def test_image_float16_input() -> None:
    pre = image_model(size=(32, 32), resize_mode="stretch", dtype="float16", normalize=IMAGENET)
    out = pre(ImagePayload(encode(data.coffee()))).feeds["x"]
    assert out.dtype == np.float16
    assert np.isfinite(out).all()


def test_shorter_side_center_crop_matches_resize_then_crop(chelsea: np.ndarray) -> None:
    pre = image_model(
        size=(224, 224),
        resize_mode="shorter_side",
        crop_ratio=0.875,
        normalize=ScaleOffset(scale=1 / 255),
    )
    prepared = pre(ImagePayload(encode(chelsea)))
    # torchvision's Resize(256) + CenterCrop(224): 451x300 -> 384x256, crop at (80, 16).
    resized = np.asarray(Image.fromarray(chelsea).resize((384, 256), Image.Resampling.BILINEAR))
    expected = resized[16:240, 80:304].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(prepared.feeds["x"][0], expected, atol=1.01 / 255)
    assert np.abs(prepared.feeds["x"][0] - expected).mean() < 1e-3
    assert prepared.context["offset"] == (-80.0, -16.0)
    assert prepared.context["image_size"] == (451, 300)
    assert prepared.context["scale"] == pytest.approx((384 / 451, 256 / 300))


def test_letterbox_context_and_padding(chelsea: np.ndarray) -> None:
    pre = image_model(
        size=(320, 320),
        resize_mode="letterbox",
        pad_value=114,
        normalize=ScaleOffset(scale=1 / 255),
    )
    prepared = pre(ImagePayload(encode(chelsea)))
    ctx = prepared.context
    new_h = round(300 * 320 / 451)  # 213
    top = (320 - new_h) // 2
    assert ctx["image_size"] == (451, 300)
    assert ctx["input_size"] == (320, 320)
    assert ctx["offset"] == (0.0, float(top))
    assert ctx["scale"] == pytest.approx((320 / 451, new_h / 300))
    out = prepared.feeds["x"][0]
    pad = np.float32(114 / 255)
    assert (out[:, :top, :] == pad).all()
    assert (out[:, top + new_h :, :] == pad).all()
    assert not (out[:, top : top + new_h, :] == pad).all()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(chelsea: np.ndarray, orientation: int) -> None:
    upright = Image.fromarray(chelsea).resize((1353, 900))
    stored = upright.transpose(
        {
            3: Image.Transpose.ROTATE_180,
            6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270,
        }[orientation]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    pre = image_model(size=(150, 225), resize_mode="stretch", normalize=ScaleOffset(scale=1 / 255))
    rotated = pre(ImagePayload(encode(stored, "JPEG", quality=95, exif=exif.tobytes())))
    reference = pre(ImagePayload(encode(upright, "JPEG", quality=95))).feeds["x"]
    assert rotated.context["image_size"] == (1353, 900)
    assert np.abs(rotated.feeds["x"] - reference).mean() < 0.01
    if orientation != 3:
        plain = pre(ImagePayload(encode(stored, "JPEG", quality=95))).feeds["x"]
        assert np.abs(plain - reference).mean() > 0.05


def test_large_jpeg_draft_matches_full_decode(chelsea: np.ndarray) -> None:
    big = Image.fromarray(chelsea).resize((1807, 1203), Image.Resampling.BICUBIC)
    pre = image_model(size=(224, 224), normalize=ScaleOffset(scale=1 / 255))
    drafted = pre(ImagePayload(encode(big, "JPEG", quality=95))).feeds["x"]
    full = pre(ImagePayload(encode(big, "PNG"))).feeds["x"]
    assert np.abs(drafted - full).mean() < 0.005


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_other_image_modes_become_rgb(chelsea: np.ndarray, mode: str) -> None:
    img = Image.fromarray(chelsea).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pre = image_model(size=(64, 64), resize_mode="stretch", normalize=ScaleOffset(scale=1 / 255))
    out = pre(ImagePayload(encode(img, fmt))).feeds["x"]
    assert out.shape == (1, 3, 64, 64)
    assert 0.2 < out.mean() < 0.7
    if mode in ("L", "LA", "1"):
        np.testing.assert_array_equal(out[0, 0], out[0, 1])


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    grey = np.full((30, 40), 32768, np.uint16)
    pre = image_model(size=(30, 40), resize_mode="stretch", dtype="uint8")
    out = pre(ImagePayload(encode(grey))).feeds["x"]
    assert (out == 128).all()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(10_000, 5_000), (100_000, 100_000)])
def test_pixel_guard_refuses_before_decoding(size: tuple[int, int]) -> None:
    # The PNG has no pixel data at all: decoding it would fail with a different error.
    pre = image_model(size=(32, 32))
    with pytest.raises(InputTooLarge, match="limit is 40000000 pixels"):
        pre(ImagePayload(_png_header_only(*size)))


def test_pixel_guard_with_low_limit_names_size(chelsea: np.ndarray) -> None:
    pre = image_model(size=(32, 32), limits=Limits(max_image_pixels=100_000))
    with pytest.raises(InputTooLarge, match=r"451x300 \(135300 pixels\); the limit is 100000"):
        pre(ImagePayload(encode(chelsea, "JPEG")))


@pytest.mark.parametrize(
    "payload", [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a\0\0"]
)
def test_garbage_is_not_decodable(payload: bytes) -> None:
    with pytest.raises(PreprocessingError, match="not a decodable image"):
        image_model(size=(32, 32))(ImagePayload(payload))


def test_truncated_jpeg_is_not_decodable(chelsea: np.ndarray) -> None:
    with pytest.raises(PreprocessingError, match="not a decodable image"):
        image_model(size=(32, 32))(ImagePayload(encode(chelsea, "JPEG")[:3000]))


def test_image_model_refuses_features_and_takes_tensors() -> None:
    pre = image_model(size=(8, 8))
    with pytest.raises(PreprocessingError, match=r"expects an image .* or a tensor; got features"):
        pre(FeaturesPayload({"a": 1.0}))
    prepared = pre(TensorPayload(np.zeros((3, 8, 8), np.float64)))
    assert prepared.feeds["x"].shape == (1, 3, 8, 8)
    assert prepared.feeds["x"].dtype == np.float32


def test_image_metadata_checked_at_load() -> None:
    with pytest.raises(MetadataError, match="dimension 2 differs"):
        image_model(shape=[1, 3, 299, 299], size=(224, 224))
    with pytest.raises(MetadataError, match="normalize"):
        image_model(dtype="uint8", size=(8, 8), normalize=IMAGENET)
    with pytest.raises(MetadataError, match="float or uint8"):
        image_model(dtype="int64", size=(8, 8))


# --- tensor ------------------------------------------------------------------------------------


def tensor_model(shape: list[Any], dtype: str = "float32", limits: Limits | None = None) -> Any:
    md = metadata(TensorPreprocessing(), [{"name": "x", "dtype": dtype, "shape": shape}])
    return pp.create(md, limits or Limits())


def test_tensor_int_list_feeds_float_input() -> None:
    out = tensor_model(["n", 4])(TensorPayload(np.array([[1, 2, 3, 4]]))).feeds["x"]
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, [[1, 2, 3, 4]])


def test_tensor_batch_dim_added() -> None:
    out = tensor_model(["batch", 3, 2])(TensorPayload(np.ones((3, 2)))).feeds["x"]
    assert out.shape == (1, 3, 2)


def test_tensor_float_to_int_refused() -> None:
    with pytest.raises(PreprocessingError, match=r"cannot feed float64 values to a int64 input"):
        tensor_model([1, 2], "int64")(TensorPayload(np.array([[1.5, 2.0]])))


def test_tensor_int_narrowing_checks_range() -> None:
    model = tensor_model([1, 2], "int32")
    assert model(TensorPayload(np.array([[1, -7]]))).feeds["x"].dtype == np.int32
    with pytest.raises(PreprocessingError, match="do not fit int32"):
        model(TensorPayload(np.array([[1, 2**40]])))


def test_tensor_shape_mismatch_names_input_and_shapes() -> None:
    model = tensor_model(["batch", 3, 224, 224])
    with pytest.raises(PreprocessingError) as err:
        model(TensorPayload(np.zeros((1, 3, 224, 200), np.float32)))
    msg = str(err.value)
    assert "'x'" in msg
    assert "[batch, 3, 224, 224]" in msg
    assert "[1, 3, 224, 200]" in msg
    with pytest.raises(PreprocessingError, match=r"rank 2 does not match"):
        model(TensorPayload(np.zeros((3, 224), np.float32)))


def test_tensor_element_bound() -> None:
    model = tensor_model(["n"], limits=Limits(max_tensor_elements=10))
    with pytest.raises(InputTooLarge, match="11 elements; the limit is 10"):
        model(TensorPayload(np.zeros(11)))


def test_tensor_unknown_input_and_wrong_payload() -> None:
    model = tensor_model([1, 2])
    with pytest.raises(PreprocessingError, match="no input 'z'"):
        model(TensorPayload(np.zeros((1, 2)), input="z"))
    with pytest.raises(PreprocessingError, match="model expects a tensor; got an image"):
        model(ImagePayload(b"..."))


def test_tensor_feeds_bypasses_any_kind() -> None:
    pre = TabularPreprocessing(features=[Feature(name="a"), Feature(name="b")])
    md = metadata(pre, [{"name": "row", "dtype": "float32", "shape": [None, 2]}])
    prepared = tensor_feeds(md, TensorPayload(np.array([3, 4])), Limits())
    np.testing.assert_array_equal(prepared.feeds["row"], [[3.0, 4.0]])


# --- tabular -----------------------------------------------------------------------------------


@pytest.fixture
def tabular() -> pp.Preprocessor:
    pre = TabularPreprocessing(
        features=[
            Feature(name="age", offset=30, scale=10, min=0, max=130),
            Feature(name="income", offset=1000, scale=500),
            Feature(name="score", default=0.5),
        ]
    )
    md = metadata(pre, [{"name": "row", "dtype": "float32", "shape": [None, 3]}])
    return pp.create(md, Limits())


def test_tabular_order_and_scaling(tabular: pp.Preprocessor) -> None:
    out = tabular(FeaturesPayload({"score": 0.25, "income": 2000, "age": 45})).feeds["row"]
    assert out.dtype == np.float32
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out, [[1.5, 2.0, 0.25]])


def test_tabular_default_and_missing(tabular: pp.Preprocessor) -> None:
    out = tabular(FeaturesPayload({"income": 1000, "age": 30})).feeds["row"]
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5]])
    with pytest.raises(PreprocessingError, match="missing features: 'age'"):
        tabular(FeaturesPayload({"income": 1000}))


def test_tabular_unknown_non_finite_and_bounds(tabular: pp.Preprocessor) -> None:
    with pytest.raises(PreprocessingError, match="unknown features: 'height', 'weight'"):
        tabular(FeaturesPayload({"age": 1, "income": 1, "weight": 2, "height": 3}))
    with pytest.raises(PreprocessingError, match="'income' must be finite"):
        tabular(FeaturesPayload({"age": 1, "income": float("nan")}))
    with pytest.raises(PreprocessingError, match=r"'age' is 200\.0; the maximum is 130"):
        tabular(FeaturesPayload({"age": 200, "income": 1}))
    with pytest.raises(PreprocessingError, match="'age' must be a number; got str"):
        tabular(FeaturesPayload({"age": "old", "income": 1}))  # type: ignore[dict-item]


def test_tabular_wrong_payload(tabular: pp.Preprocessor) -> None:
    with pytest.raises(PreprocessingError, match=r"expects features .* or a tensor; got an image"):
        tabular(ImagePayload(b"\xff\xd8"))


def test_tabular_feature_count_checked_at_load() -> None:
    pre = TabularPreprocessing(features=[Feature(name="a")])
    md = metadata(pre, [{"name": "row", "dtype": "float32", "shape": [None, 2]}])
    with pytest.raises(MetadataError, match=r"1 features make a row \[1, 1\]"):
        pp.create(md, Limits())
