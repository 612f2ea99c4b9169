"""Model identity: the ``model_id`` a published model is served under.

``model_id`` is ``<name slug>-<8 hex of sha256(metadata CID)>``: every replica derives the
same id from the same CID (in any spelling: the digest is taken of the canonical CIDv1 base32
form), and two models with the same name get different ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

from registry.unixfs import canonical_cid

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def model_id_for(name: str, metadata_cid: str) -> str:
    """A short, stable id for a published model: its name plus a digest of its metadata CID."""
    slug = _SLUG_RE.sub("-", name.lower()).strip("-")[:48] or "model"
    with contextlib.suppress(ValueError):  # not a CID: a digest of the string as given
        metadata_cid = canonical_cid(metadata_cid)
    digest = hashlib.sha256(metadata_cid.encode()).hexdigest()[:8]
    return f"{slug}-{digest}"
