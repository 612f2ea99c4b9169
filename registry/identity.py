"""Model identity: the ``model_id`` a published model is served under.

``model_id`` is ``<name slug>-<8 hex of sha256(metadata CID)>``: every replica derives the
same id from the same CID, and two models with the same name get different ids.
"""

from __future__ import annotations

import hashlib
import re

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def model_id_for(name: str, metadata_cid: str) -> str:
    """A short, stable id for a published model: its name plus a digest of its metadata CID."""
    slug = _SLUG_RE.sub("-", name.lower()).strip("-")[:48] or "model"
    digest = hashlib.sha256(metadata_cid.encode()).hexdigest()[:8]
    return f"{slug}-{digest}"
