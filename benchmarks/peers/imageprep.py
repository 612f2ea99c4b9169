"""The image preprocessing every peer server runs: encoded photo -> the model's input tensor.

The steps of cidserve's ``image`` preprocessing (``preprocessing/image.py``) for its
``shorter_side`` resize, with Pillow and numpy only (a peer's venv has no cidserve):

1. open the image and read its EXIF orientation (nothing decoded yet);
2. for a JPEG, ask the decoder for a reduced scale (``Image.draft``) no smaller than the
   resize needs, and note the region of the drafted image that covers the original;
3. decode, apply the EXIF orientation; grey and RGB stay as they are, other modes become RGB;
4. resize the shorter side to ``floor(min(size) / crop_ratio)`` and centre-crop ``size``, in
   one resampling (``Image.resize`` with a source box), then convert grey to RGB;
5. ``pixel * scale + offset`` per channel in float32, in the model's channel order, layout
   (``[1, 3, H, W]`` or ``[1, H, W, 3]``) and dtype.

:class:`ImageParams` holds what a model's metadata says (normalisation already reduced to a
per-channel scale and offset); it travels to a peer as JSON (:meth:`ImageParams.to_json`).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

Box = tuple[float, float, float, float]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True)
class ImageParams:
    """How one model's input is made from a photo (``size`` is ``(height, width)``)."""

    input: str
    size: tuple[int, int]
    crop_ratio: float
    interpolation: str
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR"
    layout: str  # "NCHW" or "NHWC"
    dtype: str  # numpy dtype name of the input

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImageParams:
        return cls(
            **{
                **doc,
                "size": tuple(doc["size"]),
                "scale": tuple(doc["scale"]),
                "offset": tuple(doc["offset"]),
            }
        )


class Preprocessor:
    """``Preprocessor(params)(photo)``: the model's input array for one encoded photo."""

    def __init__(self, params: ImageParams) -> None:
        self.params = params
        self._resample = _RESAMPLE[params.interpolation]
        self._scale = np.asarray(params.scale, np.float32)  # in the model's channel order
        self._offset = np.asarray(params.offset, np.float32)
        self._dtype = np.dtype(params.dtype)

    def __call__(self, photo: bytes | Image.Image) -> np.ndarray:
        """The input for ``photo``: its encoded bytes, or an image Pillow has opened but not
        yet decoded (so that a JPEG can still be decoded at a reduced scale)."""
        img = photo if isinstance(photo, Image.Image) else Image.open(io.BytesIO(photo))
        orientation = _orientation(img)
        swap = orientation in _SWAPS_AXES
        width, height = (img.height, img.width) if swap else img.size
        scale, crop = self._plan(width, height)
        jpeg = img.format in ("JPEG", "MPO")
        region = _draft(img, scale[::-1] if swap else scale) if jpeg else None
        img.load()
        if region is None:
            region = (0.0, 0.0, float(img.width), float(img.height))
        region = _oriented_box(orientation, region, img.width, img.height)
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        return self._tensor(self._resize(img, region, crop, width, height))

    def _plan(self, width: int, height: int) -> tuple[tuple[float, float], Box]:
        """The resize factors ``(kx, ky)`` and the crop (original pixels) for an upright
        ``width`` x ``height`` photo: torchvision's ``Resize(s)`` + ``CenterCrop(size)``."""
        th, tw = self.params.size
        s = math.floor(min(tw, th) / self.params.crop_ratio + 1e-9)
        rw, rh = (s, int(s * height / width)) if width <= height else (int(s * width / height), s)
        if rw < tw or rh < th:
            f = max(tw / width, th / height)
            rw, rh = max(tw, round(width * f)), max(th, round(height * f))
        left, top = round((rw - tw) / 2), round((rh - th) / 2)
        kx, ky = rw / width, rh / height
        return (kx, ky), (left / kx, top / ky, (left + tw) / kx, (top + th) / ky)

    def _resize(
        self, img: Image.Image, region: Box, crop: Box, width: int, height: int
    ) -> np.ndarray:
        """The ``size`` RGB pixels: ``crop`` of the original, taken from ``region`` of ``img``
        (the decoded pixels that cover the original), in one resampling."""
        kx = (region[2] - region[0]) / width
        ky = (region[3] - region[1]) / height
        box = (
            max(0.0, region[0] + crop[0] * kx),
            max(0.0, region[1] + crop[1] * ky),
            min(float(img.width), region[0] + crop[2] * kx),
            min(float(img.height), region[1] + crop[3] * ky),
        )
        th, tw = self.params.size
        if (tw, th) != img.size or box != (0.0, 0.0, img.width, img.height):
            img = img.resize((tw, th), self._resample, box=box)
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))

    def _tensor(self, rgb: np.ndarray) -> np.ndarray:
        """``[1, ...]`` input from ``(H, W, 3)`` uint8 RGB pixels."""
        if self.params.channel_order == "BGR":
            rgb = rgb[:, :, ::-1]
        values = rgb * self._scale + self._offset
        if self.params.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values[np.newaxis], dtype=self._dtype)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8) from the image's header; 1 when absent or malformed."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _draft(img: Image.Image, scale: tuple[float, float]) -> Box | None:
    """Let the JPEG decoder scale down to no less than ``scale`` (stored axes); the region of
    the drafted image that covers the original, or None when it is not reduced."""
    w, h = img.size
    need = (math.ceil(w * scale[0]), math.ceil(h * scale[1]))
    if need[0] >= w or need[1] >= h:
        return None
    drafted = img.draft(None, need)
    return None if drafted is None else drafted[1]


def _oriented_box(orientation: int, box: Box, width: int, height: int) -> Box:
    """``box`` in a ``width`` x ``height`` image, after that image is EXIF-transposed."""
    x0, y0, x1, y1 = box
    moves = {
        2: lambda x, y: (width - x, y),
        3: lambda x, y: (width - x, height - y),
        4: lambda x, y: (x, height - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (height - y, x),
        7: lambda x, y: (height - y, width - x),
        8: lambda x, y: (y, width - x),
    }
    move = moves.get(orientation, lambda x, y: (x, y))
    (ax, ay), (bx, by) = move(x0, y0), move(x1, y1)
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
