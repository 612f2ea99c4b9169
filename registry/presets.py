"""Preprocessing presets for common image-model families (``cidserve publish --preset``).

A preset is the ``preprocessing`` object written out in full, every option of the ``image``
(or ``tensor``) kind given, so the metadata document is the same whether or not the
publisher also runs it through ``preprocessing.validate_options`` (which fills in the same
defaults; ``tests/plugins/test_metadata_spec.py`` checks that they agree). This module only
writes data: the kinds, and their options models, live in ``preprocessing``.
"""

from __future__ import annotations

from typing import Any, Literal

from registry.metadata import PreprocessingSpec, TensorSpec

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


def _image(
    spec: TensorSpec,
    default: int,
    interpolation: str,
    normalize: dict[str, Any],
) -> PreprocessingSpec:
    size, layout = _spatial(spec, default)
    return PreprocessingSpec.model_validate(
        {
            "kind": "image",
            "input": spec.name,
            "size": list(size),
            "resize_mode": "shorter_side",
            "crop_ratio": 0.875,
            "interpolation": interpolation,
            "normalize": normalize,
            "channel_order": "RGB",
            "layout": layout,
            "pad_value": 114,
        }
    )


def preset_preprocessing(preset: str, image_input: TensorSpec) -> PreprocessingSpec:
    """The preprocessing spec of ``preset`` for a model whose image input is ``image_input``."""
    if preset == "none":
        return PreprocessingSpec(kind="tensor", input=image_input.name)
    if preset == "imagenet":
        mean_std = {"type": "mean_std", "mean": list(_IMAGENET_MEAN), "std": list(_IMAGENET_STD)}
        return _image(image_input, 224, "bilinear", mean_std)
    if preset == "inception":
        half = {"type": "mean_std", "mean": [0.5] * 3, "std": [0.5] * 3}
        return _image(image_input, 299, "bilinear", half)
    if preset == "efficientnet-lite":
        scale = {"type": "scale_offset", "scale": 1 / 128, "offset": -127 / 128}
        return _image(image_input, 224, "bicubic", scale)
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
