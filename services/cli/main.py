"""The ``cidserve`` command: ``serve``, ``publish``, ``export``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from registry.store import ContentStore, ContentStoreError
from services.cli.serve import cmd_serve
from services.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    pass

log = logging.getLogger("cidserve")


def _setup_logging(level: str, fmt: str = "auto") -> None:
    from services.observability.logs import setup_logging

    setup_logging(level, fmt)


def _load_json_file(path: str | None) -> object:
    if path is None:
        return None
    return json.loads(Path(path).read_text())


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    import postprocessing
    import preprocessing
    from registry.metadata import MetadataError
    from registry.publish import publish_model

    pre_doc = _load_json_file(args.preprocessing)
    post_doc = _load_json_file(args.postprocessing)
    try:
        # Each kind validates its own options (installed plug-ins too), naming the bad field.
        pre = preprocessing.validate_options(pre_doc) if pre_doc else None
        post = postprocessing.validate_options(post_doc) if post_doc else None
    except MetadataError as exc:
        print(f"cidserve publish: {exc}", file=sys.stderr)
        return 2
    minter = None
    if args.mint:
        from services.cli.chain_commands import CommandError, minting_client

        try:
            minter = minting_client(settings)  # configuration checked before publishing
        except CommandError as exc:
            print(f"cidserve publish --mint: {exc}", file=sys.stderr)
            return exc.code

    async def run() -> int:
        store = _publish_store(args, settings)
        try:
            result = await publish_model(
                store,
                Path(args.model),
                name=args.name,
                version_=args.version,
                description=args.description,
                labels_path=Path(args.labels) if args.labels else None,
                preset=args.preset,
                task=args.task,
                preprocessing=pre,
                postprocessing=post,
                cache_predictions=not args.no_cache_predictions,
            )
        finally:
            await store.aclose()
        doc = result.to_json()
        if minter is not None:
            doc.update(await _mint(minter, result.metadata_cid, args.mint_to))
        if args.json:
            print(json.dumps(doc))
        else:
            print(result.metadata_cid)
            if "tokenId" in doc:
                print(f"tokenId {doc['tokenId']}")
        return 0 if minter is None or "tokenId" in doc else 1

    try:
        return asyncio.run(run())
    except (ValueError, OSError, ContentStoreError) as exc:
        print(f"cidserve publish: {exc}", file=sys.stderr)
        return 1


def _publish_store(args: argparse.Namespace, settings: Settings) -> ContentStore:
    """Where ``publish`` stores content: the IPFS node (``--ipfs-api`` or
    CIDSERVE_IPFS_API_URL), with a progress bar on stderr for large files; else the embedded
    store. Both give the same CIDs."""
    from registry.local_store import LocalContentStore

    api_url = args.ipfs_api or settings.ipfs_api_url
    if api_url is None:
        return LocalContentStore(settings.store_dir)
    from registry.blob_cache import BlobCache
    from registry.ipfs_store import IpfsContentStore
    from services.wiring import ipfs_config

    return IpfsContentStore(
        ipfs_config(settings, api_url=api_url),
        BlobCache(settings.blob_cache_path, settings.blob_cache_max_bytes),
        progress=_ProgressBar.factory(sys.stderr),
    )


def _http_url(value: str) -> str:
    """An ``http(s)://host[:port]`` URL argument."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value.strip().rstrip("/")


class _ProgressBar:
    """Upload progress on stderr for files of ``MIN_BYTES`` or more.

    On a terminal one line is redrawn (at most ten times a second); otherwise (a log, a pipe)
    a line is written at every tenth of the file, so the output stays short.
    """

    MIN_BYTES = 4 << 20
    WIDTH = 30

    def __init__(self, stream: TextIO, name: str, total: int | None) -> None:
        self.stream = stream
        self.name = name
        self.total = total
        self.done = 0
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1

    @classmethod
    def factory(cls, stream: TextIO) -> Callable[[str, int | None], _ProgressBar | _NoProgress]:
        def make(name: str, total: int | None) -> _ProgressBar | _NoProgress:
            if total is None or total < cls.MIN_BYTES:
                return _NoProgress()
            return cls(stream, name, total)

        return make

    def update(self, n: int) -> None:
        self.done += n
        total = self.total or 1
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= total:
                self._last_draw = now
                self._draw("\r")
        else:
            tenth = min(10, self.done * 10 // total)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self._draw("")

    def _draw(self, prefix: str) -> None:
        total = self.total or 1
        frac = min(1.0, self.done / total)
        filled = int(frac * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
        line = (
            f"{prefix}adding {self.name} [{bar}] {frac * 100:5.1f}% "
            f"{self.done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s"
        )
        self.stream.write(line if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self._draw("\r")
            self.stream.write("\n")
            self.stream.flush()


class _NoProgress:
    """No progress shown (a small file)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from registry import export

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.model == "efficientnet-lite0":
        info = export.export_efficientnet_lite0(out)
    else:
        info = export.build_resnet18(out, seed=args.seed)
    if args.labels:
        Path(args.labels).write_text(json.dumps(export.imagenet_labels()))
    print(f"{info.path} ({info.size_bytes} bytes, {info.seconds:.1f} s)")
    return 0


async def _mint(minter: object, metadata_cid: str, to: str | None) -> dict[str, object]:
    """``publish --mint``: mint a token for the published metadata CID."""
    from services.chain.deploy import ContractReverted
    from services.cli.chain_commands import mint_token

    try:
        return await asyncio.to_thread(mint_token, minter, metadata_cid, to)
    except (ContractReverted, OSError, ValueError) as exc:
        print(f"cidserve publish: published {metadata_cid}, mint failed: {exc}", file=sys.stderr)
        return {"mintError": str(exc)}


def build_parser() -> argparse.ArgumentParser:
    from registry.presets import PRESETS
    from registry.publish import TASKS

    p = argparse.ArgumentParser(
        prog="cidserve", description="Serve ONNX models addressed by IPFS CIDs."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--host", help="bind address (CIDSERVE_HOST)")
    s.add_argument("--port", type=int, help="port (CIDSERVE_PORT / PORT)")
    s.add_argument(
        "--demo",
        action="store_true",
        help="export, publish and load the ImageNet EfficientNet-Lite0 demo model",
    )
    s.add_argument(
        "--workers",
        type=int,
        help="worker processes (CIDSERVE_WORKERS; default 1); /metrics adds them up",
    )
    s.set_defaults(func=cmd_serve)

    pub = sub.add_parser("publish", help="store an ONNX model, its labels and metadata")
    pub.add_argument("model", help="path to the .onnx file")
    pub.add_argument("--labels", help="labels file: JSON array of strings, or one per line")
    pub.add_argument("--preset", choices=PRESETS, default="none", help="image preprocessing")
    pub.add_argument("--task", choices=TASKS, default="classification")
    pub.add_argument("--name", help="model name (default: the file name)")
    pub.add_argument("--version", default="1.0.0")
    pub.add_argument("--description", default="")
    pub.add_argument("--preprocessing", help="JSON file with a full preprocessing spec")
    pub.add_argument("--postprocessing", help="JSON file with a full postprocessing spec")
    pub.add_argument("--no-cache-predictions", action="store_true")
    pub.add_argument("--json", action="store_true", help="print a JSON object")
    pub.add_argument(
        "--mint",
        action="store_true",
        help="then mint a license token naming the metadata CID (CIDSERVE_CHAIN_RPC_URL, "
        "CIDSERVE_LICENSE_CONTRACT, key from CIDSERVE_PRIVATE_KEY or CIDSERVE_KEYSTORE)",
    )
    pub.add_argument("--mint-to", metavar="ADDRESS", help="token owner (default: the signer)")
    pub.add_argument(
        "--ipfs-api",
        metavar="URL",
        type=_http_url,
        help="add and pin to this IPFS node's RPC API (default: CIDSERVE_IPFS_API_URL; "
        "unset: the embedded store)",
    )
    pub.set_defaults(func=cmd_publish)

    ex = sub.add_parser("export", help="export a reference model to ONNX (needs [export])")
    ex.add_argument("model", choices=("efficientnet-lite0", "resnet18"))
    ex.add_argument("output")
    ex.add_argument("--seed", type=int, default=0, help="resnet18: weight seed")
    ex.add_argument("--labels", help="also write the ImageNet labels (JSON) here")
    ex.set_defaults(func=cmd_export)

    from services.cli.chain_commands import add_commands

    add_commands(sub)  # chain deploy|mint, license grant|revoke|check|buy|price|withdraw, sign
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"cidserve: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level, settings.log_format)
    return int(args.func(args, settings))
