"""Preprocessing presets for common image-model families (``cidserve publish --preset``)."""

from __future__ import annotations

from typing import Literal

from registry.metadata import (
    ImagePreprocessing,
    MeanStd,
    Preprocessing,
    ScaleOffset,
    TensorPreprocessing,
    TensorSpec,
)

PresetName = Literal["imagenet", "inception", "efficientnet-lite", "none"]
PRESETS: tuple[str, ...] = ("imagenet", "inception", "efficientnet-lite", "none")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _spatial(spec: TensorSpec, default: int) -> tuple[tuple[int, int], Literal["NCHW", "NHWC"]]:
    """(height, width) and layout read from a 4-D image input; ``default`` where dynamic."""
    shape = spec.shape
    if len(shape) != 4:
        raise ValueError(
            f"input {spec.name!r} has shape {shape}; an image preset needs a 4-D input"
        )
    layout: Literal["NCHW", "NHWC"] = (
        "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
    )
    hw = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    h, w = (d if isinstance(d, int) and d > 0 else default for d in hw)
    return (h, w), layout


def preset_preprocessing(preset: str, image_input: TensorSpec) -> Preprocessing:
    """The preprocessing spec of ``preset`` for a model whose image input is ``image_input``."""
    if preset == "none":
        return TensorPreprocessing(input=image_input.name)
    if preset == "imagenet":
        size, layout = _spatial(image_input, 224)
        return ImagePreprocessing(
            input=image_input.name,
            size=size,
            layout=layout,
            crop_ratio=0.875,
            interpolation="bilinear",
            normalize=MeanStd(mean=_IMAGENET_MEAN, std=_IMAGENET_STD),
        )
    if preset == "inception":
        size, layout = _spatial(image_input, 299)
        return ImagePreprocessing(
            input=image_input.name,
            size=size,
            layout=layout,
            crop_ratio=0.875,
            interpolation="bilinear",
            normalize=MeanStd(mean=(0.5,) * 3, std=(0.5,) * 3),
        )
    if preset == "efficientnet-lite":
        size, layout = _spatial(image_input, 224)
        return ImagePreprocessing(
            input=image_input.name,
            size=size,
            layout=layout,
            crop_ratio=0.875,
            interpolation="bicubic",
            normalize=ScaleOffset(scale=1 / 128, offset=-127 / 128),
        )
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
