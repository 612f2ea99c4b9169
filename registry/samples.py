"""Real photographs for demos, smoke tests and benchmarks, taken from scikit-image's data.

The photos ship inside the scikit-image package (no download), which comes with the
``export`` extra (``pip install 'cidserve[export]'``). scikit-image is imported only when a
photo is asked for, so importing this module works without it.

Available names: ``chelsea`` (a tabby cat), ``coffee`` (a cup of espresso), ``astronaut``
(a portrait), ``rocket`` (a launch) and ``motorcycle`` (the left view of a stereo pair).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SAMPLE_NAMES", "sample_image_bytes", "write_sample_image"]

SAMPLE_NAMES: tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")

_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


def _skimage_data() -> Any:
    """``skimage.data``, or a RuntimeError with the install command for the extra."""
    try:
        import skimage.data
    except ImportError as exc:
        raise RuntimeError(
            "scikit-image is needed for the sample photos but is not installed; "
            "run: pip install 'cidserve[export]'"
        ) from exc
    return skimage.data


def _loaders(data: Any) -> dict[str, Callable[[], np.ndarray]]:
    """Map each sample name to a function returning its HxWx3 uint8 RGB array."""
    return {
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "astronaut": data.astronaut,
        "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
    }


def _normalise_format(fmt: str) -> str:
    """Pillow's name for an image format given in any case or by a common alias."""
    upper = fmt.upper().lstrip(".")
    return _FORMAT_ALIASES.get(upper, upper)


def sample_image_bytes(name: str = "chelsea", fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode the sample photo ``name`` as an image file in format ``fmt`` and return its bytes.

    ``fmt`` is any format Pillow can write (``JPEG``, ``PNG``, ``WEBP``, ...); ``quality``
    applies to the lossy formats. The photo is RGB, 8 bits per channel, at its original size.
    """
    from PIL import Image

    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample image {name!r}; choose from {', '.join(SAMPLE_NAMES)}")
    pixels = _loaders(_skimage_data())[name]()
    image = Image.fromarray(pixels).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=_normalise_format(fmt), quality=quality)
    return buffer.getvalue()


def write_sample_image(name: str, path: Path, fmt: str | None = None, quality: int = 90) -> Path:
    """Write the sample photo ``name`` to ``path`` and return the path.

    The format is ``fmt`` if given, otherwise the one Pillow associates with the file's
    extension (``.jpg``, ``.png``, ``.webp``, ...).
    """
    from PIL import Image

    path = Path(path)
    if fmt is None:
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the image format from {path.name!r}; pass fmt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sample_image_bytes(name, fmt, quality))
    return path
