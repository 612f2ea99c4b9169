"""Model outputs -> predictions a user reads.

Kinds are plug-ins found by entry point (group ``cidserve.postprocessing``; cidserve's own
``classification``, ``detection`` and ``score`` are declared the same way): :func:`kinds`
lists them, :func:`create` builds a model's postprocessor from its metadata and labels, and
:func:`validate_options` checks a ``postprocessing`` spec (publishing). See
docs/EXTENDING.md.
"""

from postprocessing.base import (
    GROUP,
    KINDS,
    LabelledOptions,
    NonFiniteOutput,
    Options,
    PostprocessingError,
    PostprocessingKind,
    PostprocessingOptions,
    Postprocessor,
    PostprocessorBase,
    PostprocessorFactory,
    Result,
    create,
    kinds,
    parse_options,
    register,
    validate_options,
)

__all__ = [
    "GROUP",
    "KINDS",
    "LabelledOptions",
    "NonFiniteOutput",
    "Options",
    "PostprocessingError",
    "PostprocessingKind",
    "PostprocessingOptions",
    "Postprocessor",
    "PostprocessorBase",
    "PostprocessorFactory",
    "Result",
    "create",
    "kinds",
    "parse_options",
    "register",
    "validate_options",
]
