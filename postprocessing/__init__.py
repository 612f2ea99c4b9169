"""Model outputs -> predictions a user reads.

Importing this package registers the built-in kinds (``classification``, ``detection``,
``score``); :func:`create` builds a model's postprocessor from its metadata and labels.
"""

from postprocessing import classification, detection, score
from postprocessing.base import (
    Options,
    PostprocessingError,
    Postprocessor,
    PostprocessorFactory,
    Result,
    create,
    kinds,
    register,
)

__all__ = [
    "Options",
    "PostprocessingError",
    "Postprocessor",
    "PostprocessorFactory",
    "Result",
    "classification",
    "create",
    "detection",
    "kinds",
    "register",
    "score",
]
