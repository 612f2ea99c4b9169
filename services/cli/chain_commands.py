"""The chain commands of the ``cidserve`` CLI: ``chain``, ``license``, ``sign``, ``publish --mint``.

Settings come from the environment like every other command (``CIDSERVE_CHAIN_RPC_URL``,
``CIDSERVE_LICENSE_CONTRACT``, ``CIDSERVE_CHAIN_ID``); the signing key only from
``CIDSERVE_PRIVATE_KEY`` or ``CIDSERVE_KEYSTORE`` + ``CIDSERVE_KEYSTORE_PASSWORD``, never from
an argument. Heavy imports (web3, eth_account) happen inside the commands, so the other
commands start fast.

Exit codes: 0 done (``license check``: the license is valid; ``chain token-of``: the content
has a token), 1 the chain refused or could not be reached (``license check``: no valid
license; ``chain token-of``: no token), 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from services.settings import Settings, is_evm_address

_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CommandError(Exception):
    """A user-facing error: message and exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_duration(text: str) -> int:
    """``3600``, ``90m``, ``12h``, ``30d``, ``2w`` -> seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 90m, 12h, 30d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _address(text: str) -> str:
    if not is_evm_address(text):
        raise argparse.ArgumentTypeError(f"not an address: {text!r} (0x + 40 hex digits)")
    return text


def _token(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token id: {text!r}") from None
    if not 0 <= value < 2**256:
        raise argparse.ArgumentTypeError(f"token id out of range: {text!r}")
    return value


def _print(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc) if getattr(args, "json", False) else text)


# -- clients ---------------------------------------------------------------------------------


def _client(settings: Settings, args: argparse.Namespace, *, signer: bool, contract: bool) -> Any:
    try:
        from services.chain.deploy import ChainClient
    except ImportError as exc:  # web3 is the `chain` extra: serving never needs it
        raise CommandError(
            f"this command sends chain transactions and needs web3 ({exc.name} is not "
            "installed): pip install 'cidserve[chain]'"
        ) from None
    from services.chain.keys import KeyConfigError, load_account
    from services.chain.rpc import redact_url

    if settings.chain_rpc_url is None:
        raise CommandError("set CIDSERVE_CHAIN_RPC_URL (or AVALANCHE_RPC_URL) to the chain's RPC")
    address = getattr(args, "contract", None) or settings.license_contract
    if contract and address is None:
        raise CommandError("set CIDSERVE_LICENSE_CONTRACT (or pass --contract)")
    account = None
    if signer:
        try:
            account = load_account(settings)
        except KeyConfigError as exc:
            raise CommandError(str(exc)) from None
    client = ChainClient(
        settings.chain_rpc_url, account=account, contract=address, chain_id=settings.chain_id
    )
    if not client.w3.is_connected():
        raise CommandError(f"cannot reach {redact_url(settings.chain_rpc_url)}", code=1)
    if settings.chain_id is not None and int(client.w3.eth.chain_id) != settings.chain_id:
        raise CommandError(
            f"{redact_url(settings.chain_rpc_url)} is chain {client.w3.eth.chain_id}, "
            f"not CIDSERVE_CHAIN_ID={settings.chain_id}"
        )
    return client


def _run(fn: Any, args: argparse.Namespace, settings: Settings) -> int:
    from services.chain.reverts import ContractReverted

    try:
        return int(fn(args, settings))
    except CommandError as exc:
        print(f"cidserve {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except ContractReverted as exc:
        print(f"cidserve {args.command}: the contract refused: {exc}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError, TimeoutError) as exc:
        print(f"cidserve {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


# -- chain -----------------------------------------------------------------------------------


def _chain_deploy(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, args, signer=True, contract=False)
    result = client.deploy()
    doc = {
        "contract": result.value,
        "chainId": client.chain_id,
        "deployer": client.account.address,
        **result.to_json(),
    }
    _print(args, doc, str(result.value))
    return 0


def minting_client(settings: Settings) -> Any:
    """A client that can mint (RPC, contract and key configured and the chain reachable);
    raises :class:`CommandError` otherwise. Used by ``publish --mint`` before publishing."""
    return _client(settings, argparse.Namespace(contract=None), signer=True, contract=True)


def mint_token(client: Any, metadata_cid: str, to: str | None = None) -> dict[str, Any]:
    """Mint a token naming ``metadata_cid``; the fields ``publish --mint`` adds to its output."""
    result = client.mint(metadata_cid, to)
    return {
        "tokenId": result.value,
        "contract": client.address,
        "owner": to or client.account.address,
        "tokenURI": f"ipfs://{metadata_cid}",
        "txHash": result.tx_hash,
    }


def _canonical(text: str) -> str:
    from registry.unixfs import canonical_cid

    try:
        return canonical_cid(text)
    except ValueError:
        raise CommandError(f"not a CID: {text[:120]!r}") from None


def _chain_mint(args: argparse.Namespace, settings: Settings) -> int:
    cid = _canonical(args.metadata_cid)  # the one spelling the contract accepts
    client = _client(settings, args, signer=True, contract=True)
    result = client.mint(cid, args.to)
    doc = {
        "tokenId": result.value,
        "contract": client.address,
        "metadataCid": cid,
        **result.to_json(),
    }
    _print(args, doc, str(result.value))
    return 0


def _chain_token_of(args: argparse.Namespace, settings: Settings) -> int:
    cid = _canonical(args.metadata_cid)
    client = _client(settings, args, signer=False, contract=True)
    token_id, minter = client.content_token(cid)
    doc = {"metadataCid": cid, "tokenId": token_id or None, "minter": minter, "tokenURI": None}
    if token_id:
        doc["tokenURI"] = client.token_uri(token_id)  # the spelling the token was minted with
    _print(args, doc, f"{token_id} (minted by {minter})" if token_id else "no token")
    return 0 if token_id else 1


# -- license ---------------------------------------------------------------------------------


def _expiry(args: argparse.Namespace, client: Any) -> int:
    if args.expires_at is not None:
        return int(args.expires_at)
    return client.block_timestamp() + int(args.duration)


def _license_grant(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, args, signer=True, contract=True)
    expires_at = _expiry(args, client)
    result = client.grant(args.token_id, args.address, expires_at)
    doc = {"tokenId": args.token_id, "address": args.address, "expiresAt": expires_at}
    _print(args, {**doc, **result.to_json()}, f"granted until {_when(expires_at)}")
    return 0


def _license_revoke(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, args, signer=True, contract=True)
    result = client.revoke(args.token_id, args.address)
    doc = {"tokenId": args.token_id, "address": args.address, **result.to_json()}
    _print(args, doc, "revoked")
    return 0


def _license_check(args: argparse.Namespace, settings: Settings) -> int:
    address = args.address
    client = _client(settings, args, signer=address is None, contract=True)
    if address is None:
        address = client.account.address
    info = client.license_status(args.token_id, address)
    doc = {"tokenId": args.token_id, "address": address, **info.to_json()}
    if info.owner:
        text = "valid (token owner)"
    elif info.valid:
        text = f"valid until {_when(info.expires_at)}"
    elif info.expires_at:
        text = f"no valid license (expired {_when(info.expires_at)})"
    else:
        text = "no valid license"
    _print(args, doc, text)
    return 0 if info.valid else 1


def _license_buy(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, args, signer=True, contract=True)
    price, duration = client.price_of(args.token_id)
    result = client.buy(args.token_id)
    doc = {"tokenId": args.token_id, "priceWei": price, "durationS": duration}
    doc["expiresAt"] = result.value
    _print(args, {**doc, **result.to_json()}, f"bought; valid until {_when(result.value)}")
    return 0


def _license_price(args: argparse.Namespace, settings: Settings) -> int:
    setting = args.set is not None
    client = _client(settings, args, signer=setting, contract=True)
    if setting:
        if args.set > 0 and args.duration is None:
            raise CommandError("--set needs --duration (how long one purchase lasts)")
        client.set_price(args.token_id, args.set, args.duration or 0)
    price, duration = client.price_of(args.token_id)
    doc = {"tokenId": args.token_id, "priceWei": price, "durationS": duration}
    text = f"{price} wei for {duration} s" if price else "not for sale"
    _print(args, doc, text)
    return 0


def _license_withdraw(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, args, signer=True, contract=True)
    result = client.withdraw()
    _print(args, result.to_json(), f"withdrawn in {result.tx_hash}")
    return 0


def _when(stamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) + f" ({stamp})"


# -- sign ------------------------------------------------------------------------------------


def request_headers(values: list[str] | None) -> dict[str, str]:
    """``-H 'Name: value'`` options as a dict."""
    out: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise CommandError(f"--header: expected 'Name: value', got {item[:80]!r}")
        out[name] = value.strip()
    return out


def _sign(args: argparse.Namespace, settings: Settings) -> int:
    from services.chain.client import sign_url
    from services.chain.keys import KeyConfigError, load_account
    from services.chain.signing import sign_request

    try:
        account = load_account(settings)
    except KeyConfigError as exc:
        raise CommandError(str(exc)) from None
    if args.data_file is not None:
        body = (
            sys.stdin.buffer.read() if args.data_file == "-" else Path(args.data_file).read_bytes()
        )
    else:
        body = (args.data or "").encode()
    sent = request_headers(args.header)
    try:
        if "://" in args.target:
            headers = sign_url(account.key, args.method, args.target, sent, body)
        elif not args.target.startswith("/"):
            raise CommandError(f"not a URL or an absolute path: {args.target!r}")
        elif not any(k.lower() == "host" for k in sent):
            raise CommandError(
                "the host is signed: give the full URL, or the path with -H 'Host: HOST[:PORT]'"
            )
        else:
            headers = sign_request(account.key, args.method, args.target, body, headers=sent)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(headers))
    elif args.format == "curl":
        print("\n".join(f"-H\n{k}: {v}" for k, v in headers.items()))
    else:
        print("\n".join(f"{k}: {v}" for k, v in headers.items()))
    return 0


# -- parser ----------------------------------------------------------------------------------


def _with(fn: Any) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        return _run(fn, args, settings)

    return run


def _common(p: argparse.ArgumentParser, *, contract: bool = True) -> None:
    if contract:
        p.add_argument("--contract", type=_address, help="default: CIDSERVE_LICENSE_CONTRACT")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def add_commands(sub: Any) -> None:
    """Register ``chain``, ``license`` and ``sign`` on the CLI's subparsers."""
    chain = sub.add_parser("chain", help="the license contract (deploy, mint)")
    csub = chain.add_subparsers(dest="chain_command", required=True)
    dep = csub.add_parser("deploy", help="deploy the ModelLicense contract; prints its address")
    _common(dep, contract=False)
    dep.set_defaults(func=_with(_chain_deploy))
    mint = csub.add_parser("mint", help="mint a token for a published metadata CID")
    mint.add_argument("metadata_cid")
    mint.add_argument("--to", type=_address, help="owner of the token (default: the signer)")
    _common(mint)
    mint.set_defaults(func=_with(_chain_mint))
    tok = csub.add_parser(
        "token-of",
        help="the token of a content (any spelling of its CID) and its minter; exit 1: none",
    )
    tok.add_argument("metadata_cid")
    _common(tok)
    tok.set_defaults(func=_with(_chain_token_of))

    lic = sub.add_parser("license", help="grant, revoke, check and buy model licenses")
    lsub = lic.add_subparsers(dest="license_command", required=True)
    grant = lsub.add_parser("grant", help="grant ADDRESS a license for TOKEN_ID (token owner)")
    grant.add_argument("token_id", type=_token)
    grant.add_argument("address", type=_address)
    when = grant.add_mutually_exclusive_group()
    when.add_argument(
        "--duration", type=parse_duration, default=30 * 86400, help="from now (default 30d)"
    )
    when.add_argument("--expires-at", type=int, help="unix time of the chain")
    _common(grant)
    grant.set_defaults(func=_with(_license_grant))

    rev = lsub.add_parser("revoke", help="end ADDRESS's license for TOKEN_ID (token owner)")
    rev.add_argument("token_id", type=_token)
    rev.add_argument("address", type=_address)
    _common(rev)
    rev.set_defaults(func=_with(_license_revoke))

    chk = lsub.add_parser("check", help="is ADDRESS (default: the signer) licensed? exit 0/1")
    chk.add_argument("token_id", type=_token)
    chk.add_argument("address", type=_address, nargs="?")
    _common(chk)
    chk.set_defaults(func=_with(_license_check))

    buy = lsub.add_parser("buy", help="buy a license for TOKEN_ID at its listed price")
    buy.add_argument("token_id", type=_token)
    _common(buy)
    buy.set_defaults(func=_with(_license_buy))

    price = lsub.add_parser("price", help="show (or --set) TOKEN_ID's license price")
    price.add_argument("token_id", type=_token)
    price.add_argument("--set", type=int, metavar="WEI", help="new price in wei (0: stop sales)")
    price.add_argument("--duration", type=parse_duration, help="what one purchase buys")
    _common(price)
    price.set_defaults(func=_with(_license_price))

    wd = lsub.add_parser("withdraw", help="take out the proceeds of license sales")
    _common(wd)
    wd.set_defaults(func=_with(_license_withdraw))

    sign = sub.add_parser(
        "sign",
        help="print signature headers for one request (key from CIDSERVE_PRIVATE_KEY)",
        description="Sign METHOD TARGET (+ headers, body) as docs/LICENSING.md describes and "
        "print the X-Cidserve-* headers. Each output is good for one request.",
    )
    sign.add_argument("method", help="HTTP method, e.g. POST")
    sign.add_argument("target", help="URL or path with query, exactly as the request sends it")
    sign.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a header the request is sent with (repeatable): Content-Type and X-Tensor-* "
        "are signed, so pass the ones you send; Host too when TARGET is a path",
    )
    body = sign.add_mutually_exclusive_group()
    body.add_argument("--data", help="the request body as a string")
    body.add_argument("--data-file", help="file holding the request body ('-': stdin)")
    sign.add_argument(
        "--format",
        choices=("headers", "curl", "json"),
        default="headers",
        help="headers: 'Name: value' lines; curl: '-H' and the header on alternate lines "
        "(for mapfile); json: an object",
    )
    sign.set_defaults(func=_with(_sign))
