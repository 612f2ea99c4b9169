"""What never leaves the process as it is: credentials in URLs, and this host's file paths.

RPC and IPFS endpoints often carry an API key in the path (``https://host/v3/<key>``), the
query or the userinfo (``https://user:pass@host``). :func:`redact_url` keeps the scheme, host
and port only; :func:`redact_urls` does it to every URL inside a text (an error message, a
health report). :func:`strip_paths` removes absolute file paths (the data directory, temporary
files) from messages of libraries such as ONNX Runtime, keeping only the file's name.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

REDACTED = "<redacted>"

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_TRAILING = ".,;:!?)}'\""
# An absolute POSIX path of two or more parts, not inside a URL (``//host/...``) or a word.
_PATH = re.compile(r"(?<![\w.:/~-])(?:/[\w.@+~=-]+){2,}/?")


def redact_url(url: str) -> str:
    """``scheme://host[:port]``, plus ``/<redacted>`` when a path, query, fragment or userinfo
    was dropped. A value that does not parse as a URL is replaced whole. Idempotent: a text
    redacted once comes out of :func:`redact_urls` unchanged."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return REDACTED
    host = parts.hostname
    if not parts.scheme or not host:
        return f"{parts.scheme}://{REDACTED}" if parts.scheme else REDACTED
    if ":" in host:
        host = f"[{host}]"
    base = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    hidden = (
        parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    )
    if hidden:
        return f"{base}/{REDACTED}"
    return base + parts.path  # "" or "/": redacting twice changes nothing


def _redact_match(m: re.Match[str]) -> str:
    text = m.group(0)
    tail = ""
    while text and text[-1] in _TRAILING + "]":
        if text[-1] == "]" and text.count("[") >= text.count("]"):
            break
        tail = text[-1] + tail
        text = text[:-1]
    return redact_url(text) + tail


def redact_urls(text: str) -> str:
    """``text`` with every URL in it redacted as :func:`redact_url` does."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with the URLs in every string redacted."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return value


def strip_paths(text: str) -> str:
    """``text`` with every absolute file path replaced by its last part (``.../model.onnx``)."""
    return _PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
