"""The client commands of the ``cidserve`` CLI: ``models``, ``load``, ``predict``.

They talk to a running server through the Python client (``cidserve-client``, in
``clients/python``) at ``--url`` (default ``CIDSERVE_URL``, else ``http://127.0.0.1:8000``).
The operator's bearer is ``CIDSERVE_ADMIN_TOKEN`` (or ``CIDSERVE_ADMIN_TOKEN_FILE``); requests
are signed when a key is configured the way ``cidserve sign`` reads it
(``CIDSERVE_PRIVATE_KEY``, or ``CIDSERVE_KEYSTORE`` + ``CIDSERVE_KEYSTORE_PASSWORD``).

Exit codes: 0 done; 1 the server refused (its status and message on stderr) or could not be
reached; 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.settings import Settings

URL_ENV = "CIDSERVE_URL"
DEFAULT_URL = "http://127.0.0.1:8000"


class _Refused(Exception):
    """A user-facing error: message and exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value.strip().rstrip("/")


def _non_negative(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _signing_key(settings: Settings) -> bytes | None:
    """The configured key, or None (unsigned requests) when none is configured."""
    if settings.private_key is None and settings.keystore is None:
        return None
    from services.chain.keys import KeyConfigError, load_account

    try:
        return bytes(load_account(settings).key)
    except KeyConfigError as exc:
        raise _Refused(str(exc), 2) from None


def _client(cidserve_client: Any, args: argparse.Namespace, settings: Settings) -> Any:
    token = settings.admin_secret
    return cidserve_client.Client(
        args.url,
        private_key=_signing_key(settings),
        admin_token=None if token is None else token.get_secret_value(),
        timeout=args.timeout,
    )


def _print_json(result: Any) -> None:
    print(json.dumps(result.model_dump(mode="json", by_alias=True, exclude={"raw"})))


def _models(client: Any, args: argparse.Namespace) -> None:
    result = client.models()
    if args.json:
        _print_json(result)
        return
    if not result.models:
        print("no models in memory")
    for m in result.models:
        token = "-" if m.token_id is None else str(m.token_id)
        print(
            f"{m.model_id}\t{m.name} {m.version}\ttoken {token}\t{m.execution_provider}\t"
            f"{m.requests} requests"
        )


def _load(client: Any, args: argparse.Namespace) -> None:
    ref = {"model": args.ref} if "@" in args.ref else {"metadata_cid": args.ref}
    result = client.load(token_id=args.token_id, warmup=not args.no_warmup, **ref)
    if args.json:
        _print_json(result)
    else:
        print(result.model_id)
        print(f"{result.status} in {result.load_time_ms:.0f} ms on {result.execution_provider}")


def _predict(client: Any, args: argparse.Namespace) -> None:
    image = Path(args.image)
    if not image.is_file():
        raise _Refused(f"{args.image}: no such file", 2)
    result = client.predict(args.model, image, top_k=args.top_k)
    if args.json:
        _print_json(result)
        return
    for p in result.predictions:
        print(f"{p.confidence:.4f}\t{p.label}")


def _execute(fn: Any, args: argparse.Namespace, settings: Settings) -> int:
    try:
        import cidserve_client
    except ImportError:
        raise _Refused(
            "the client is not installed: pip install -e 'clients/python[signing]'", 2
        ) from None
    try:
        with _client(cidserve_client, args, settings) as client:
            fn(client, args)
    except cidserve_client.APIError as exc:
        raise _Refused(str(exc), 1) from None  # "<status> <title>: <the server's message>"
    except cidserve_client.CidserveError as exc:
        raise _Refused(exc.message, 1) from None
    except ValueError as exc:  # arguments the client refuses before sending
        raise _Refused(str(exc), 2) from None
    return 0


def _run(fn: Any) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return _execute(fn, args, settings)
        except _Refused as exc:
            print(f"cidserve {args.command}: {exc}", file=sys.stderr)
            return exc.code

    return run


def _models_and_catalog(args: argparse.Namespace, settings: Settings) -> int:
    """``cidserve models``: the server's models, then (text output) the operator's catalogue
    of names, versions and labels (``cidserve catalog``)."""
    code = int(_run(_models)(args, settings))
    if code == 0 and not args.json:
        from services.cli.catalog_commands import cmd_catalog

        print("\ncatalogue (names, versions, labels):")
        cmd_catalog(argparse.Namespace(name=None, json=False), settings)
    return code


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        type=_url,
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the server (default: {URL_ENV}, else {DEFAULT_URL})",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    p.add_argument("--json", action="store_true", help="print the server's reply as JSON")


def add_commands(sub: Any) -> None:
    """Register ``models``, ``load`` and ``predict`` on the CLI's subparsers."""
    auth = (
        "The operator token comes from CIDSERVE_ADMIN_TOKEN; requests are signed with "
        "CIDSERVE_PRIVATE_KEY (or CIDSERVE_KEYSTORE) when set."
    )
    models = sub.add_parser("models", help="list the models a server holds", description=auth)
    _common(models)
    models.set_defaults(func=_models_and_catalog)

    load = sub.add_parser(
        "load", help="load a model on a server by metadata CID or NAME@VERSION", epilog=auth
    )
    load.add_argument(
        "ref", metavar="REF", help="the metadata CID, or NAME@latest | NAME@VERSION | NAME@LABEL"
    )
    load.add_argument("--token-id", type=_non_negative, help="the token licensing the model")
    load.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")
    _common(load)
    load.set_defaults(func=_run(_load))

    predict = sub.add_parser("predict", help="classify an image with a loaded model", epilog=auth)
    predict.add_argument("model", metavar="MODEL", help="the model id")
    predict.add_argument("image", metavar="IMAGE", help="an image file (JPEG, PNG, ...)")
    predict.add_argument("--top-k", type=_non_negative, default=5, help="classes (0: all)")
    _common(predict)
    predict.set_defaults(func=_run(_predict))
