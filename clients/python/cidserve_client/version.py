"""The installed version of cidserve-client."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def client_version() -> str:
    try:
        return version("cidserve-client")
    except PackageNotFoundError:  # imported from a source tree that is not installed
        return "0.0.0+source"


def user_agent() -> str:
    return f"cidserve-client/{client_version()}"
