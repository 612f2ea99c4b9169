"""The ``cidserve`` command: ``serve``, ``publish``, ``export``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from services.settings import Settings, SettingsError, load_settings

log = logging.getLogger("cidserve")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load_json_file(path: str | None) -> object:
    if path is None:
        return None
    return json.loads(Path(path).read_text())


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from registry.local_store import LocalContentStore
    from registry.metadata import Postprocessing, Preprocessing
    from registry.publish import publish_model

    pre_doc = _load_json_file(args.preprocessing)
    post_doc = _load_json_file(args.postprocessing)
    try:
        from pydantic import TypeAdapter

        pre = TypeAdapter(Preprocessing).validate_python(pre_doc) if pre_doc else None
        post = TypeAdapter(Postprocessing).validate_python(post_doc) if post_doc else None
    except ValidationError as exc:
        print(f"cidserve publish: invalid spec: {exc.errors()[0]}", file=sys.stderr)
        return 2

    async def run() -> int:
        store = LocalContentStore(settings.store_dir)
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
        if args.json:
            print(json.dumps(result.to_json()))
        else:
            print(result.metadata_cid)
        return 0

    try:
        return asyncio.run(run())
    except (ValueError, OSError) as exc:
        print(f"cidserve publish: {exc}", file=sys.stderr)
        return 1


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


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from services.app import build_services, create_app
    from services.runtime import ProviderUnavailable

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        services = build_services(settings)
    except ProviderUnavailable as exc:
        print(f"cidserve: CIDSERVE_REQUIRE_GPU is set but {exc}", file=sys.stderr)
        return 2
    if args.demo:
        from services.demo import curl_lines, prepare_demo

        demo = asyncio.run(prepare_demo(settings.data_dir, settings.models_dir, services.store))

        async def load_demo(svc: object) -> None:
            outcome = await services.loader.load(demo.metadata_cid, None, True)
            base = f"http://{settings.host}:{settings.port}"
            lines = "\n".join(curl_lines(base, demo))
            print(
                f"\ncidserve demo: model {outcome.model.model_id} "
                f"(metadataCid {demo.metadata_cid}) loaded in {outcome.load_time_ms:.0f} ms "
                f"on {outcome.model.provider}.\nTry:\n{lines}\n",
                file=sys.stderr,
                flush=True,
            )

        services.startup_tasks.append(load_demo)
    app = create_app(settings, services)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
    )
    return 0


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
    pub.set_defaults(func=cmd_publish)

    ex = sub.add_parser("export", help="export a reference model to ONNX (needs [export])")
    ex.add_argument("model", choices=("efficientnet-lite0", "resnet18"))
    ex.add_argument("output")
    ex.add_argument("--seed", type=int, default=0, help="resnet18: weight seed")
    ex.add_argument("--labels", help="also write the ImageNet labels (JSON) here")
    ex.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"cidserve: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
