"""The options of the ``image`` preprocessing kind (``preprocessing`` in the metadata).

``{"kind": "image", "input": ..., "size": [height, width], "resize_mode": ..., ...}``; see
:class:`ImagePreprocessing`. Validated strictly (unknown fields refused) when a model is
loaded or published; the processing itself is in :mod:`preprocessing.image`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from preprocessing.base import PreprocessingOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeanStd(_Strict):
    """``(pixel / 255 - mean) / std`` per channel, channels in the model's channel order."""

    type: Literal["mean_std"] = "mean_std"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


class ScaleOffset(_Strict):
    """``pixel * scale + offset`` on 0..255 pixels (e.g. ``(x - 127) / 128``)."""

    type: Literal["scale_offset"] = "scale_offset"
    scale: float
    offset: float = 0.0


Normalization = Annotated[MeanStd | ScaleOffset, Field(discriminator="type")]

Side = Annotated[int, Field(ge=1, le=8192)]


class ImagePreprocessing(PreprocessingOptions):
    """Decode an image and make the model's input tensor from it.

    ``resize_mode``:
    * ``shorter_side``: scale so the shorter side is ``min(size) / crop_ratio``, then center-crop
      ``size`` (the usual ImageNet evaluation transform: 256 -> 224 is ``crop_ratio=0.875``);
    * ``stretch``: resize straight to ``size``, ignoring the aspect ratio;
    * ``letterbox``: scale to fit inside ``size`` keeping the aspect ratio and pad with
      ``pad_value`` (YOLO-style detectors; boxes are mapped back to the original image).
    """

    kind: Literal["image"] = "image"
    size: tuple[Side, Side]
    resize_mode: Literal["shorter_side", "stretch", "letterbox"] = "shorter_side"
    crop_ratio: float = Field(1.0, gt=0.0, le=1.0)
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    normalize: Normalization | None = None
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = Field(114, ge=0, le=255)
