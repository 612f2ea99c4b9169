"""Test harness for the chain: ``anvil`` on a free loopback port, and the license contract.

:class:`Anvil` runs the anvil binary from ``node_modules`` (npm ``@foundry-rs/anvil``) in its
own process group with ``--state <file>``: stopping it (SIGTERM) dumps the chain, and
:meth:`Anvil.start` on the same port loads it back, so a test can take the RPC endpoint away
and bring the same chain back. Accounts are fresh random keys funded with
``anvil_setBalance``; :func:`deploy_license` deploys ``services/chain/ModelLicense.json``.
:func:`cid_spellings` writes one content's CID every way a publisher might;
:func:`license_chain` is both in one ``with`` (what the tests' ``chain`` fixtures use).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from multiformats import CID

from registry.local_store import LocalContentStore
from services.chain.deploy import ChainClient
from services.http.app import create_app
from services.wiring import build_services
from tests.conftest import Gateway, make_settings
from tests.harness import ServerThread, free_port

ROOT = Path(__file__).resolve().parent.parent
ANVIL_BIN = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
ANVIL_SHIM = ROOT / "node_modules" / ".bin" / "anvil"


def anvil_binary() -> Path | None:
    for candidate in (ANVIL_BIN, ANVIL_SHIM):
        if candidate.exists():
            return candidate
    return None


class Anvil:
    """One anvil chain (chain id 31337) on 127.0.0.1:<port>, state kept in ``state_path``."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = anvil_binary()
        if binary is None:
            raise RuntimeError("anvil is not installed: run `npm ci` in the repository root")
        self.binary = binary
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.state_path = workdir / f"anvil-{self.port}.json"
        self.log_path = workdir / f"anvil-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)
        self._http = httpx.Client(timeout=10)

    def start(self, timeout: float = 20.0) -> Anvil:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--state",
                    str(self.state_path),
                    "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anvil exited: {self.log_path.read_text()[-2000:]}")
            try:
                self.rpc("eth_chainId")
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("anvil did not answer in time")

    def stop(self) -> None:
        """SIGTERM the process group (anvil dumps its state), then wait for the port to close."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        self._http.close()

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- JSON-RPC -------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any) -> Any:
        r = self._http.post(
            self.url,
            json={"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params},
        )
        doc = r.json()
        if "error" in doc:
            raise RuntimeError(f"{method}: {doc['error']}")
        return doc["result"]

    def chain_time(self) -> int:
        return int(self.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)

    def advance(self, seconds: int) -> int:
        """Move the chain's clock forward and mine a block; returns the new block time."""
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")
        return self.chain_time()

    def funded_account(self, ether: int = 100) -> LocalAccount:
        account: LocalAccount = Account.create()
        self.rpc("anvil_setBalance", account.address, hex(ether * 10**18))
        return account


@dataclass
class LicenseChain:
    """A running chain with the license contract deployed by ``publisher``."""

    anvil: Anvil
    contract: str
    publisher: LocalAccount

    def client(self, account: LocalAccount | None = None) -> ChainClient:
        return ChainClient(
            self.anvil.url, account=account or self.publisher, contract=self.contract
        )


def deploy_license(anvil: Anvil) -> LicenseChain:
    publisher = anvil.funded_account()
    result = ChainClient(anvil.url, account=publisher).deploy()
    return LicenseChain(anvil=anvil, contract=str(result.value), publisher=publisher)


def cid_spellings(cid: str) -> dict[str, str]:
    """Other strings naming the content of ``cid`` (the same multihash): CIDv0, base58btc and
    upper-case base32 CIDv1, and CIDv1 with the other codecs (dag-pb, raw, dag-cbor)."""
    parsed = CID.decode(cid)
    dag_pb = parsed.set(codec="dag-pb")
    return {
        "v0": str(dag_pb.set(base="base58btc").set(version=0)),
        "base58btc": str(parsed.set(base="base58btc")),
        "upper-case": str(parsed.set(base="base32upper")),
        "dag-pb": str(dag_pb),
        "raw": str(parsed.set(codec="raw")),
        "dag-cbor": str(parsed.set(codec="dag-cbor")),
    }


@contextlib.contextmanager
def license_chain(workdir: Path) -> Iterator[LicenseChain]:
    """anvil on a free port with the license contract deployed; stopped on exit. Skips the
    test when anvil is not installed (``npm ci``)."""
    if anvil_binary() is None:
        pytest.skip("anvil is not installed: run `npm ci`")
    anvil = Anvil(workdir)
    try:
        anvil.start()
        yield deploy_license(anvil)
    finally:
        anvil.close()


@contextlib.contextmanager
def chain_gateway(
    workdir: Path, store: LocalContentStore, chain: LicenseChain, **overrides: Any
) -> Iterator[Gateway]:
    """A gateway whose settings name ``chain`` (RPC URL, contract, chain id), under uvicorn on
    a free port, serving from ``store``; ``overrides`` are more settings."""
    settings = make_settings(
        workdir,
        chain_rpc_url=chain.anvil.url,
        license_contract=chain.contract,
        chain_id=31337,
        **{"chain_timeout_s": 2.0, **overrides},
    )
    services = build_services(settings, store=store)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield Gateway(srv.url, services, client)
