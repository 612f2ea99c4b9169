"""JSON encoding shared by replies and the prediction cache: orjson, numpy values allowed."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps(content: Any) -> bytes:
    """``content`` as compact JSON bytes; numpy scalars and arrays become JSON numbers/lists."""
    return orjson.dumps(content, default=_default, option=ORJSON_OPTIONS)
