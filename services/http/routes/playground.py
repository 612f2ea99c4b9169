"""``/playground``: the browser page (static files, no build step) and ``/``, which links to it.

The files live in ``services/http/static`` (package data). Only the files named in
:data:`ASSETS` are served, each with its own media type, and every page and asset carries a
strict Content-Security-Policy: scripts, styles and connections to this origin only (no inline
script, nothing from another site); images also from ``blob:`` (the preview of a chosen
file). The page talks to the API like any other client: a licensed model's requests are
signed by the browser's wallet (``static/playground/signing.js``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PLAYGROUND_DIR = STATIC_DIR / "playground"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
HTML = "text/html; charset=utf-8"
# The playground's assets by URL name: the only files served under /playground/.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "signing.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path, media_type: str) -> FileResponse:
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
async def home() -> FileResponse:
    """A short page linking to the playground and the API documentation."""
    return _file(STATIC_DIR / "index.html", HTML)


@router.get("/playground")
@router.get("/playground/")
async def playground() -> FileResponse:
    return _file(PLAYGROUND_DIR / "index.html", HTML)


@router.get("/playground/{name}")
async def playground_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise StarletteHTTPException(404, f"no playground file named {name[:100]!r}")
    return _file(PLAYGROUND_DIR / name, media_type)
