"""Fast JSON replies (orjson; numpy values allowed)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse as _FastAPIJSONResponse

from services.encoding import dumps


class JSONResponse(_FastAPIJSONResponse):
    """JSON via orjson. A subclass of FastAPI's ``JSONResponse``, so routes that return it
    keep their documented response models in the OpenAPI schema."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
