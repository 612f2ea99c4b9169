"""The ``cidserve`` command: ``serve``, ``publish``, ``export``; the chain commands
(:mod:`services.cli.chain_commands`) and the client commands ``models``, ``load``, ``predict``
(:mod:`services.cli.client_commands`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from registry.store import ContentStore, ContentStoreError
from services.cli.serve import cmd_serve
from services.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from registry.torch_export import TorchExport

log = logging.getLogger("cidserve")


def _setup_logging(level: str, fmt: str = "auto") -> None:
    from services.observability.logs import setup_logging

    setup_logging(level, fmt)


def _load_json_file(path: str | None) -> object:
    if path is None:
        return None
    return json.loads(Path(path).read_text())


TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
"""``publish`` exports a SOURCE with one of these suffixes (or any SOURCE with ``--arch``)
to ONNX first."""


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from registry.export import ExportError
    from registry.torch_export import read_export_tools

    source = Path(args.model)
    if not (args.arch or source.suffix.lower() in TORCH_SUFFIXES):
        if _torch_flags(args):
            print(
                f"cidserve publish: {_torch_flags(args)} applies to PyTorch sources only",
                file=sys.stderr,
            )
            return 2
        tools = read_export_tools(source) if source.is_file() else {}
        return _publish(args, settings, source, tools)
    with tempfile.TemporaryDirectory(prefix="cidserve-export-") as tmp:
        try:
            info = _export_torch(args, source, Path(tmp) / f"{source.stem}.onnx")
        except ExportError as exc:
            print(f"cidserve publish: {exc}", file=sys.stderr)
            return 1
        print(f"exported {source}: {_verified(info)}", file=sys.stderr)
        return _publish(args, settings, info.path, info.tools())


def _publish(
    args: argparse.Namespace, settings: Settings, model_path: Path, tools: dict[str, str]
) -> int:
    """Publish the ONNX file at ``model_path``; ``tools`` go into the metadata's ``tools``."""
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

    from services.cli.catalog_commands import (
        CatalogErrors,
        open_catalog,
        publish_version,
        record_version,
    )

    name = args.name or Path(args.model).stem

    async def run() -> int:
        from services.cli.progress import steps

        async with open_catalog(settings) as catalog:
            # The catalogue decides the version before anything is stored.
            version = await publish_version(catalog, name, args.version)
            store = _publish_store(args, settings)
            try:
                with steps(sys.stderr, "publish") as bar:
                    result = await publish_model(
                        store,
                        model_path,
                        name=name,
                        version_=version,
                        description=args.description,
                        labels_path=Path(args.labels) if args.labels else None,
                        preset=args.preset,
                        task=args.task,
                        preprocessing=pre,
                        postprocessing=post,
                        cache_predictions=not args.no_cache_predictions,
                        tools=tools,
                        progress=bar,
                    )
            finally:
                await store.aclose()
            await record_version(catalog, result.metadata.name, version, result.metadata_cid)
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
    except (ContentStoreError, *CatalogErrors) as exc:
        print(f"cidserve publish: {exc}", file=sys.stderr)
        return 1


def _publish_store(args: argparse.Namespace, settings: Settings) -> ContentStore:
    """Where ``publish`` stores content: the IPFS node (``--ipfs-api`` or
    CIDSERVE_IPFS_API_URL), with a progress bar on a terminal's stderr for large files; else
    the embedded store. Both give the same CIDs."""
    from registry.local_store import LocalContentStore
    from services.cli.progress import byte_bars

    api_url = args.ipfs_api or settings.ipfs_api_url
    if api_url is None:
        return LocalContentStore(settings.store_dir)
    from registry.blob_cache import BlobCache
    from registry.ipfs_store import IpfsContentStore
    from services.wiring import ipfs_config

    return IpfsContentStore(
        ipfs_config(settings, api_url=api_url),
        BlobCache(settings.blob_cache_path, settings.blob_cache_max_bytes),
        progress=byte_bars(sys.stderr),
    )


def _http_url(value: str) -> str:
    """An ``http(s)://host[:port]`` URL argument."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value.strip().rstrip("/")


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from registry import export
    from services.cli.progress import steps

    out = Path(args.output)
    source = Path(args.model)
    if args.model in export.BUILTIN_MODELS and not source.exists():
        if _torch_flags(args):
            print(
                f"cidserve export: {_torch_flags(args)} applies to checkpoints and "
                f"TorchScript files, not to {args.model}",
                file=sys.stderr,
            )
            return 2
        out.parent.mkdir(parents=True, exist_ok=True)
        with steps(sys.stderr, f"export {args.model}") as bar:
            if args.model == "efficientnet-lite0":
                info = export.export_efficientnet_lite0(out, progress=bar)
            else:
                info = export.build_resnet18(out, seed=args.seed, progress=bar)
        if args.labels:
            Path(args.labels).write_text(json.dumps(export.imagenet_labels()))
        print(f"{info.path} ({info.size_bytes} bytes, {info.seconds:.1f} s)")
        return 0
    if args.labels:
        print("cidserve export: --labels applies to the built-in models only", file=sys.stderr)
        return 2
    try:
        result = _export_torch(args, source, out)
    except export.ExportError as exc:
        print(f"cidserve export: {exc}", file=sys.stderr)
        return 1
    print(f"{result.path} ({result.size_bytes} bytes, {result.seconds:.1f} s); {_verified(result)}")
    return 0


def _torch_flags(args: argparse.Namespace) -> str:
    """The first option given that only a PyTorch source takes, or ``""``."""
    for flag in ("arch", "input_shape", "input_name", "output_name", "sample"):
        if getattr(args, flag, None):
            return "--" + flag.replace("_", "-")
    return ""


def _export_torch(args: argparse.Namespace, source: Path, out: Path) -> TorchExport:
    """``export`` / ``publish`` of a checkpoint or TorchScript file, with a progress bar."""
    from registry.torch_export import export_torch
    from services.cli.progress import steps

    with steps(sys.stderr, f"export {source.name}") as bar:
        return export_torch(
            source,
            out,
            input_shapes=args.input_shape or [],
            arch=args.arch,
            input_names=args.input_name,
            output_names=args.output_name,
            opset=args.opset,
            samples=[Path(p) for p in args.sample or []],
            tolerance=args.tolerance,
            progress=bar,
        )


def _verified(result: TorchExport) -> str:
    """The comparison's figures, for the user."""
    checks = ", ".join(f"{case} {error:.2g}" for case, error in result.errors.items())
    return (
        f"max abs error {result.max_abs_error:.3g} <= tolerance {result.tolerance:g} "
        f"(ONNX Runtime vs torch: {checks})"
    )


def _shape_arg(value: str) -> tuple[int, ...]:
    from registry.torch_export import parse_shape

    try:
        return parse_shape(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tolerance_arg(value: str) -> float:
    try:
        tolerance = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= tolerance < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: the tolerance is a number >= 0")
    return tolerance


def _add_torch_args(parser: argparse.ArgumentParser) -> None:
    """The options of a PyTorch source (``export`` and ``publish``)."""
    from registry.export import OPSET
    from registry.torch_export import DEFAULT_TOLERANCE

    g = parser.add_argument_group("PyTorch source (a .pt/.pth state dict or a TorchScript file)")
    g.add_argument(
        "--arch",
        metavar="FILE.py:CALLABLE",
        help="what builds the network the state dict fits (FILE.py:CALLABLE or "
        "package.module:CALLABLE, called with no arguments); not for TorchScript",
    )
    g.add_argument(
        "--input-shape",
        action="append",
        type=_shape_arg,
        metavar="1,3,224,224",
        help="float32 shape of an input, batch first (exported as dynamic); once per input",
    )
    g.add_argument(
        "--input-name", action="append", metavar="NAME", help="name of an input, once per input"
    )
    g.add_argument(
        "--output-name", action="append", metavar="NAME", help="name of an output, in order"
    )
    g.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    g.add_argument(
        "--sample",
        action="append",
        metavar="FILE.npy",
        help="also compare torch and ONNX Runtime on this array; once per input",
    )
    g.add_argument(
        "--tolerance",
        type=_tolerance_arg,
        default=DEFAULT_TOLERANCE,
        help=f"largest max abs error allowed (default {DEFAULT_TOLERANCE:g})",
    )


async def _mint(minter: object, metadata_cid: str, to: str | None) -> dict[str, object]:
    """``publish --mint``: mint a token for the published metadata CID."""
    from services.chain.reverts import ContractReverted
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
    from services import __version__

    p.add_argument("--version", action="version", version=f"cidserve {__version__}")
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
    pub.add_argument(
        "model",
        metavar="SOURCE",
        help="the .onnx file, or a PyTorch checkpoint / TorchScript file to export first",
    )
    pub.add_argument("--labels", help="labels file: JSON array of strings, or one per line")
    pub.add_argument("--preset", choices=PRESETS, default="none", help="image preprocessing")
    pub.add_argument("--task", choices=TASKS, default="classification")
    pub.add_argument("--name", help="model name (default: the file name)")
    pub.add_argument(
        "--version",
        help="the version (refused if the catalogue has it); default: 1.0.0 for a new name, "
        "else the newest version with its last number incremented (1.2.3 -> 1.2.4, 7 -> 8)",
    )
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
    _add_torch_args(pub)
    pub.set_defaults(func=cmd_publish)

    ex = sub.add_parser(
        "export",
        help="export a PyTorch model to ONNX, verified with ONNX Runtime (needs [export])",
    )
    ex.add_argument(
        "model",
        metavar="SOURCE",
        help="a state-dict checkpoint (.pt/.pth, with --arch), a TorchScript file, or a "
        "built-in model: efficientnet-lite0, resnet18",
    )
    ex.add_argument("output", metavar="OUTPUT.onnx")
    ex.add_argument("--seed", type=int, default=0, help="resnet18: weight seed")
    ex.add_argument("--labels", help="also write the ImageNet labels (JSON) here")
    _add_torch_args(ex)
    ex.set_defaults(func=cmd_export)

    from services.cli.chain_commands import add_commands

    add_commands(sub)  # chain deploy|mint, license grant|revoke|check|buy|price|withdraw, sign

    from services.cli import client_commands

    client_commands.add_commands(sub)  # models, load, predict: a running server, over HTTP

    from services.cli import catalog_commands

    catalog_commands.add_commands(sub)  # label, catalog: the operator's catalogue
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
