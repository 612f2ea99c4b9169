"""The ``cidserve`` command line: serve, publish, export, chain and license commands."""

from services.cli.main import main

__all__ = ["main"]
