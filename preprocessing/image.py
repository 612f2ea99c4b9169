"""The ``image`` preprocessing kind: encoded image bytes -> the model's image tensor.

Options: :class:`preprocessing.image_options.ImagePreprocessing`. Per request: identify the
image from its header and refuse it when ``width * height`` exceeds
``Limits.max_image_pixels`` (before any pixel is decoded); let the JPEG decoder scale down in
the DCT domain (``Image.draft``) to no less than the size the resize needs; refuse it when
the bytes its decoding takes exceed ``Limits.max_image_bytes`` (:func:`image_bytes`, from the
header's size and mode, before any pixel is decoded: a 16-bit, alpha or palette image costs
more a pixel than an 8-bit grey one); decode; apply the EXIF orientation; convert to 8-bit
grey or RGB (16/32-bit grey in strips, so no array larger than the 8-bit image is built);
resize (``shorter_side`` + center crop, ``stretch`` or
``letterbox``); write the pixels normalised, in the model's channel order and layout, into a
``[1, ...]`` array of the input's dtype. Everything that depends only on the model (target
size, resampling filter, per-channel scale and offset, pad values) is computed once at load.

``preprocessing.size`` is ``(height, width)``, the order of the tensor's spatial dimensions.
``shorter_side`` is torchvision's ``Resize(s)`` + ``CenterCrop(size)`` with ``s =
floor(min(size) / crop_ratio)`` (the crop and the resize are one resampling). Accepted formats:
:data:`IMAGE_FORMATS`.

``Prepared.context`` tells postprocessing where the input's pixels came from:

* ``image_size``: ``(width, height)`` of the original image (after EXIF orientation);
* ``input_size``: ``(width, height)`` of the model input;
* ``scale``, ``offset``: ``(x, y)`` pairs with ``input = original * scale + offset``. For
  ``letterbox`` the offset is the padding (left, top); for ``shorter_side`` it is minus the
  crop origin in input pixels;
* ``resize_mode``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from preprocessing.base import (
    ImagePayload,
    InputTooLarge,
    Limits,
    Payload,
    Prepared,
    PreprocessingError,
    PreprocessingKind,
    TensorPayload,
)
from preprocessing.feeds import TensorInput, model_input, numpy_dtype, wrong_payload
from preprocessing.image_options import ImagePreprocessing, MeanStd
from registry.metadata import MetadataError, ModelMetadata

EXPECTS = "an image (base64_jpeg, base64_png, raw image body) or a tensor"

# Formats accepted from clients: the common photo and web formats. Pillow's other plug-ins
# (EPS, FITS, PSD, ...) are legacy or complex parsers with no use for model input.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
Image.init()
IMAGE_FORMATS: tuple[str, ...] = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)
# Modes resized as 8-bit grey (converted to RGB after the resize, which gives the same pixels
# as converting first, at a third of the memory); every other mode is converted to RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
# Working memory of one strip of a 16/32-bit grey conversion.
_STRIP_BYTES = 1 << 20

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where the original image lands in the model input.

    ``resize`` is the size the (source) image is resized to, placed at ``paste`` in the
    input; ``crop`` is the region of the original it is taken from (original pixels)."""

    resize: tuple[int, int]
    paste: tuple[int, int]
    crop: Box
    scale: tuple[float, float]
    offset: tuple[float, float]


def plan(spec: ImagePreprocessing, width: int, height: int) -> Geometry:
    """The resize plan for an original image of ``width`` x ``height``."""
    th, tw = spec.size
    full: Box = (0.0, 0.0, float(width), float(height))
    if spec.resize_mode == "stretch":
        return Geometry((tw, th), (0, 0), full, (tw / width, th / height), (0.0, 0.0))
    if spec.resize_mode == "letterbox":
        r = min(tw / width, th / height)
        nw = min(tw, max(1, round(width * r)))
        nh = min(th, max(1, round(height * r)))
        left, top = (tw - nw) // 2, (th - nh) // 2
        return Geometry(
            (nw, nh), (left, top), full, (nw / width, nh / height), (float(left), float(top))
        )
    # shorter_side, as torchvision's Resize(s) + CenterCrop(size): the shorter side becomes
    # s = floor(min(size) / crop_ratio), the longer one is truncated to keep the aspect ratio
    # (but never below the crop), and the crop origin is rounded to whole pixels.
    s = math.floor(min(tw, th) / spec.crop_ratio + 1e-9)
    if width <= height:
        rw, rh = s, int(s * height / width)
    else:
        rw, rh = int(s * width / height), s
    if rw < tw or rh < th:
        f = max(tw / width, th / height)
        rw, rh = max(tw, round(width * f)), max(th, round(height * f))
    left, top = round((rw - tw) / 2), round((rh - th) / 2)
    kx, ky = rw / width, rh / height
    crop = (left / kx, top / ky, (left + tw) / kx, (top + th) / ky)
    return Geometry((tw, th), (0, 0), crop, (kx, ky), (-float(left), -float(top)))


def _oriented_box(orientation: int, box: Box, width: int, height: int) -> Box:
    """``box`` in a ``width`` x ``height`` image, after that image is EXIF-transposed."""
    x0, y0, x1, y1 = box

    def move(x: float, y: float) -> tuple[float, float]:
        return {
            2: (width - x, y),
            3: (width - x, height - y),
            4: (x, height - y),
            5: (y, x),
            6: (height - y, x),
            7: (height - y, width - x),
            8: (y, width - x),
        }.get(orientation, (x, y))

    (ax, ay), (bx, by) = move(x0, y0), move(x1, y1)
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _resize_mode(mode: str) -> str:
    """The mode an image of ``mode`` is resized in: ``L`` for grey, ``RGB`` otherwise."""
    return "L" if mode in _GREY_MODES or mode.startswith("I;") else "RGB"


def _pixel_bytes(mode: str) -> int:
    """Bytes Pillow holds one pixel of ``mode`` in (8-bit modes of 2-4 bands take 4)."""
    try:
        info = ImageMode.getmode(mode)
    except KeyError:
        return 8
    size = np.dtype(info.typestr).itemsize
    return size if len(info.bands) == 1 else max(4, size * len(info.bands))


def image_bytes(mode: str, width: int, height: int, *, transposed: bool = False) -> int:
    """The memory that decoding a ``width`` x ``height`` image of ``mode`` takes here: the
    decoded pixels, plus the larger of the EXIF-transposed copy (``transposed``) and the
    conversion to the mode it is resized in (none for ``L`` and ``RGB``)."""
    pixels = width * height
    decoded = pixels * _pixel_bytes(mode)
    target = _resize_mode(mode)
    converted = 0 if mode == target else pixels * _pixel_bytes(target)
    return decoded + max(decoded if transposed else 0, converted)


def _grey8(img: Image.Image) -> Image.Image:
    """8-bit grey from 16/32-bit integer grey (scaled down, not clipped) or float grey
    (clipped to 0..255), converted in strips of at most :data:`_STRIP_BYTES` of working
    memory: nothing larger than the 8-bit result is built."""
    width, height = img.size
    out = Image.new("L", (width, height))
    rows = max(1, _STRIP_BYTES // (width * 8))
    for top in range(0, height, rows):
        strip = np.asarray(img.crop((0, top, width, min(height, top + rows))))
        if img.mode == "F":
            grey = np.clip(strip, 0, 255).astype(np.uint8)
        else:
            grey = (np.clip(strip.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        out.paste(Image.fromarray(grey), (0, top))
    return out


def _to_resizable(img: Image.Image) -> Image.Image:
    """8-bit grey or RGB pixels (what the resize works on) from any mode Pillow decodes."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode.startswith("I") or mode == "F":
        return _grey8(img)
    try:
        return img.convert(_resize_mode(mode))
    except ValueError as exc:
        raise PreprocessingError(f"image mode {mode} is not supported ({exc})") from None


class PixelWriter:
    """Writes RGB uint8 pixels into the model input: channel order, normalisation, layout and
    dtype, with the per-channel scale and offset (and the pad pixel) computed once."""

    def __init__(self, spec: ImagePreprocessing, dtype: np.dtype) -> None:
        self._nchw = spec.layout == "NCHW"
        self._bgr = spec.channel_order == "BGR"
        self._dtype = dtype
        self._height, self._width = spec.size
        work = np.float64 if dtype == np.float64 else np.float32
        self._affine = dtype != np.uint8 and spec.normalize is not None
        if isinstance(spec.normalize, MeanStd):
            std = np.asarray(spec.normalize.std, np.float64)
            scale = 1.0 / (255.0 * std)
            offset = -np.asarray(spec.normalize.mean, np.float64) / std
        elif spec.normalize is not None:
            scale = np.full(3, spec.normalize.scale, np.float64)
            offset = np.full(3, spec.normalize.offset, np.float64)
        else:
            scale, offset = np.ones(3), np.zeros(3)
        pad = np.full(3, float(spec.pad_value)) * scale + offset
        if self._nchw:
            self._scale = scale.astype(work).reshape(3, 1, 1)
            self._offset = offset.astype(work).reshape(3, 1, 1)
            self._pad = pad.astype(work).reshape(3, 1, 1)
        else:
            # NHWC rows are width * 3 interleaved values: tiled per-channel arrays keep the
            # arithmetic on contiguous rows (numpy is slow broadcasting a last axis of 3).
            self._scale = np.tile(scale.astype(work), self._width)
            self._offset = np.tile(offset.astype(work), self._width)
            self._pad = np.tile(pad.astype(work), self._width)

    def new_input(self, padded: bool) -> np.ndarray:
        """An input array; ``padded`` fills it with the (normalised) pad pixel."""
        h, w = self._height, self._width
        shape = (1, 3, h, w) if self._nchw else (1, h, w, 3)
        out = np.empty(shape, self._dtype)
        if padded:
            if self._nchw:
                out[0] = self._pad
            else:
                out.reshape(h, w * 3)[:] = self._pad
        return out

    def write(self, rgb: np.ndarray, out: np.ndarray, left: int, top: int) -> None:
        """Write ``rgb`` (h, w, 3 uint8) into ``out`` with its top-left corner at (left, top)."""
        h, w = rgb.shape[:2]
        if self._nchw:
            src = rgb.transpose(2, 0, 1)
            if self._bgr:
                src = src[::-1]
            dst = out[0, :, top : top + h, left : left + w]
            scale, offset = self._scale, self._offset
        else:
            if self._bgr:
                rgb = np.ascontiguousarray(rgb[:, :, ::-1])
            src = rgb.reshape(h, w * 3)
            rows = out[0].reshape(self._height, self._width * 3)  # a view: out is contiguous
            dst = rows[top : top + h, left * 3 : (left + w) * 3]
            scale, offset = self._scale[: w * 3], self._offset[: w * 3]
        if not self._affine:
            np.copyto(dst, src, casting="unsafe")
            return
        np.multiply(src, scale, out=dst, casting="unsafe")
        np.add(dst, offset, out=dst, casting="unsafe")


class ImagePreprocessor:
    """The ``image`` kind: decodes one image per request into the model's input tensor.

    Capabilities: ``image_input`` is the input it feeds; ``warmup_shapes()`` gives that
    input batch 1, 3 channels and the configured height and width, in the layout's order."""

    def __init__(self, metadata: ModelMetadata, spec: ImagePreprocessing, limits: Limits) -> None:
        self._spec = spec
        target = model_input(metadata)
        dtype = numpy_dtype(target.dtype)
        _check_input(spec, target.name, target.shape, dtype)
        self._name = target.name
        self._tensor = TensorInput(target, limits)
        self._max_pixels = limits.max_image_pixels
        self._max_bytes = limits.max_image_bytes
        self._resample = _RESAMPLE[spec.interpolation]
        self._writer = PixelWriter(spec, dtype)
        self._input_size = (spec.size[1], spec.size[0])

    @property
    def image_input(self) -> str:
        """The model input that encoded images feed."""
        return self._name

    def warmup_shapes(self) -> dict[str, list[int]]:
        """The input's shape for one image: ``[1, 3, H, W]`` (NCHW) or ``[1, H, W, 3]``."""
        return {self._name: _input_shape(self._spec)}

    def __call__(self, payload: Payload) -> Prepared:
        """Feeds (and geometry context) for one image; a tensor is checked and fed as is."""
        if isinstance(payload, TensorPayload):
            return self._tensor(payload)
        if not isinstance(payload, ImagePayload):
            raise wrong_payload(EXPECTS, payload)
        img, region, (width, height) = self._decode(payload.data)
        geo = plan(self._spec, width, height)
        img = self._resize(img, region, width, height, geo)
        out = self._writer.new_input(padded=geo.resize != self._input_size)
        self._writer.write(np.asarray(img), out, *geo.paste)
        context: dict[str, Any] = {
            "image_size": (width, height),
            "input_size": self._input_size,
            "scale": geo.scale,
            "offset": geo.offset,
            "resize_mode": self._spec.resize_mode,
        }
        return Prepared(feeds={self._name: out}, context=context)

    def _decode(self, data: bytes) -> tuple[Image.Image, Box, tuple[int, int]]:
        """The decoded, upright image; the region of it that covers the original image (a
        JPEG decoded at a reduced scale covers it in fewer pixels); the original size."""
        img = self._open(data)
        stored_w, stored_h = img.size
        region: Box | None = None
        # A JPEG's EXIF is in its header; other formats' may follow the pixels (Pillow's PNG
        # reader decodes the image to look for it), so they are charged as upright first.
        header_orientation = 1
        if img.format in ("JPEG", "MPO"):
            header_orientation = _exif_orientation(img)
            region = self._draft(img, header_orientation)
        self._check_bytes(img, header_orientation)  # the size and mode the decoder will make
        try:
            img.load()
            orientation = _exif_orientation(img)
            if orientation != header_orientation:  # EXIF found only while decoding
                self._check_bytes(img, orientation)
            loaded_w, loaded_h = img.size
            ImageOps.exif_transpose(img, in_place=True)
        except _DECODE_ERRORS as exc:
            raise PreprocessingError(f"input is not a decodable image ({exc})") from None
        if region is None:
            region = (0.0, 0.0, float(loaded_w), float(loaded_h))
        region = _oriented_box(orientation, region, loaded_w, loaded_h)
        swap = orientation in _SWAPS_AXES
        return img, region, ((stored_h, stored_w) if swap else (stored_w, stored_h))

    def _resize(
        self, img: Image.Image, region: Box, width: int, height: int, geo: Geometry
    ) -> Image.Image:
        """The RGB pixels ``geo`` places into the input: crop and resize in one resampling."""
        img = _to_resizable(img)
        kx = (region[2] - region[0]) / width
        ky = (region[3] - region[1]) / height
        cx0, cy0, cx1, cy1 = geo.crop
        box = (
            max(0.0, region[0] + cx0 * kx),
            max(0.0, region[1] + cy0 * ky),
            min(float(img.width), region[0] + cx1 * kx),
            min(float(img.height), region[1] + cy1 * ky),
        )
        if geo.resize != img.size or box != (0.0, 0.0, img.width, img.height):
            img = img.resize(geo.resize, self._resample, box=box)
        return img if img.mode == "RGB" else img.convert("RGB")

    def _open(self, data: bytes) -> Image.Image:
        """Identify the image from its header and enforce the pixel limit (nothing decoded)."""
        if not data:
            raise PreprocessingError("input is not a decodable image (empty input)")
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise InputTooLarge(
                f"image is too large ({exc}); the limit is {self._max_pixels} pixels"
            ) from None
        except UnidentifiedImageError:
            raise PreprocessingError(
                f"input is not a decodable image (not a recognised {', '.join(IMAGE_FORMATS)} file)"
            ) from None
        except _DECODE_ERRORS as exc:
            raise PreprocessingError(f"input is not a decodable image ({exc})") from None
        width, height = img.size
        if width * height > self._max_pixels:
            raise InputTooLarge(
                f"image is {width}x{height} ({width * height} pixels); "
                f"the limit is {self._max_pixels} pixels"
            )
        if width == 0 or height == 0:
            raise PreprocessingError(f"input is not a decodable image (size {width}x{height})")
        return img

    def _check_bytes(self, img: Image.Image, orientation: int) -> None:
        """Refuse (413) an image whose decoding takes more than the byte budget."""
        width, height = img.size
        need = image_bytes(img.mode, width, height, transposed=orientation != 1)
        if need > self._max_bytes:
            raise InputTooLarge(
                f"image is {width}x{height} in mode {img.mode}: decoding and converting it "
                f"takes {need} bytes; the limit is {self._max_bytes} bytes "
                "(CIDSERVE_MAX_IMAGE_BYTES)"
            )

    def _draft(self, img: Image.Image, orientation: int) -> Box | None:
        """Ask the JPEG decoder for a reduced scale; the region of the draft that covers the
        original image (the decoder rounds partial blocks up), or None when not reduced."""
        w, h = img.size
        swap = orientation in _SWAPS_AXES
        sx, sy = (plan(self._spec, h, w) if swap else plan(self._spec, w, h)).scale
        if swap:
            sx, sy = sy, sx
        need = (math.ceil(w * sx), math.ceil(h * sy))
        if need[0] >= w or need[1] >= h:
            return None
        drafted = img.draft(None, need)
        if drafted is None:
            return None
        return drafted[1]


def _check_input(spec: ImagePreprocessing, name: str, shape: list[Any], dtype: np.dtype) -> None:
    """Refuse, at load, metadata whose image settings cannot feed the declared input."""
    if dtype.kind != "f" and dtype != np.uint8:
        raise MetadataError(
            f"invalid metadata: image input {name!r} is {dtype}; image models take a float "
            "or uint8 input",
            "inputs",
        )
    if dtype == np.uint8 and spec.normalize is not None:
        raise MetadataError(
            f"invalid metadata: input {name!r} is uint8 (raw pixels); "
            "preprocessing.normalize must not be set",
            "preprocessing.normalize",
        )
    if len(shape) != 4:
        raise MetadataError(
            f"invalid metadata: image input {name!r} has rank {len(shape)}; it must be 4 "
            f"({spec.layout})",
            "inputs",
        )
    expected = _input_shape(spec)
    for axis, (want, declared) in enumerate(zip(expected, shape, strict=True)):
        if isinstance(declared, int) and declared != want:
            raise MetadataError(
                f"invalid metadata: input {name!r} has shape {shape}; preprocessing "
                f"(size {list(spec.size)} as height, width; {spec.layout}) makes "
                f"{expected} (dimension {axis} differs)",
                "preprocessing.size",
            )


def _input_shape(spec: ImagePreprocessing) -> list[int]:
    h, w = spec.size
    return [1, 3, h, w] if spec.layout == "NCHW" else [1, h, w, 3]


def image_preprocessor(
    metadata: ModelMetadata, options: ImagePreprocessing, limits: Limits
) -> ImagePreprocessor:
    """Factory for ``preprocessing.kind == "image"``."""
    return ImagePreprocessor(metadata, options, limits)


KIND = PreprocessingKind(options=ImagePreprocessing, factory=image_preprocessor)
"""The ``image`` kind (entry point ``cidserve.preprocessing: image``)."""
