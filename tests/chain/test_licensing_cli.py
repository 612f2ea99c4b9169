"""The chain commands as a publisher and a user run them: deploy, publish --mint, grant,
check, sign, and the curl example script, against anvil and a gateway over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry import export
from registry.local_store import LocalContentStore
from services.http.app import create_app
from services.wiring import build_services
from tests.anvil import Anvil, cid_spellings
from tests.conftest import CAT_LABELS
from tests.harness import ServerThread

ROOT = Path(__file__).resolve().parents[2]
CIDSERVE = [sys.executable, "-m", "services.cli"]
CIDSERVE_BIN = Path(sys.executable).parent / "cidserve"
EXAMPLE = ROOT / "examples" / "signed_request.sh"


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    chain = Anvil(tmp_path_factory.mktemp("anvil-cli"))
    try:
        yield chain.start()
    finally:
        chain.close()


class Cli:
    """Runs ``cidserve`` with a clean ``CIDSERVE_*`` environment plus the given variables."""

    def __init__(self, env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CIDSERVE_")}
        base.pop("AVALANCHE_RPC_URL", None)
        self.env = {**base, **env}
        self.outputs: list[str] = []

    def __call__(self, *args: str, key: str | None = None, check: bool = True):
        env = dict(self.env)
        if key is not None:
            env["CIDSERVE_PRIVATE_KEY"] = key
        proc = subprocess.run(
            [*CIDSERVE, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        self.outputs.append(proc.stdout + proc.stderr)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc


def test_publisher_and_user_flow_through_the_cli(anvil, tmp_path, efficientnet_onnx, photos):
    publisher = anvil.funded_account()
    user = anvil.funded_account()
    stranger = anvil.funded_account()
    pub_key, user_key = publisher.key.hex(), user.key.hex()
    data_dir = tmp_path / "data"
    cli = Cli({"CIDSERVE_CHAIN_RPC_URL": anvil.url, "CIDSERVE_DATA_DIR": str(data_dir)})

    # Without a key the command names the variables to set; nothing is sent.
    proc = cli("chain", "deploy", check=False)
    assert proc.returncode == 2
    assert "CIDSERVE_PRIVATE_KEY" in proc.stderr

    contract = cli("chain", "deploy", key=pub_key).stdout.strip()
    assert contract.startswith("0x") and len(contract) == 42
    cli.env["CIDSERVE_LICENSE_CONTRACT"] = contract

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(export.imagenet_labels()))
    published = json.loads(
        cli(
            "publish",
            str(efficientnet_onnx),
            "--name",
            "efficientnet-lite0",
            "--labels",
            str(labels),
            "--preset",
            "efficientnet-lite",
            "--mint",
            "--json",
            key=pub_key,
        ).stdout
    )
    token = published["tokenId"]
    assert token == 1
    assert published["tokenURI"] == "ipfs://" + published["metadataCid"]
    assert published["owner"] == publisher.address

    # One token per content: another spelling of the same CID is not minted again, and the
    # CLI says which token the content has; `chain token-of` finds it from any spelling.
    v0 = cid_spellings(published["metadataCid"])["v0"]
    proc = cli("chain", "mint", v0, key=user_key, check=False)
    assert proc.returncode == 1
    assert f"already has token {token} minted by {publisher.address}" in proc.stderr
    found = json.loads(cli("chain", "token-of", v0, "--json").stdout)
    assert found == {
        "metadataCid": cid_spellings(published["metadataCid"])["dag-pb"],  # v0, canonical
        "tokenId": token,
        "minter": publisher.address,
        "tokenURI": published["tokenURI"],
    }
    proc = cli("chain", "token-of", "Qm-not-a-cid", check=False)
    assert proc.returncode == 2 and "not a CID" in proc.stderr

    cli("license", "grant", str(token), user.address, "--duration", "1h", key=pub_key)
    check = cli("license", "check", str(token), user.address, "--json")
    assert json.loads(check.stdout)["valid"] is True
    refused = cli("license", "check", str(token), stranger.address, check=False)
    assert refused.returncode == 1
    assert "no valid license" in refused.stdout
    # Only the token's owner grants: the contract refuses the user, the CLI names the reason.
    proc = cli("license", "grant", str(token), stranger.address, key=user_key, check=False)
    assert proc.returncode == 1
    assert "NotTokenOwner" in proc.stderr

    settings_env = {
        "chain_rpc_url": anvil.url,
        "license_contract": contract,
        "chain_id": 31337,
    }
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, **settings_env)
    services = build_services(settings, store=LocalContentStore(data_dir / "store"))
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        r = client.post(
            "/api/models/load", json={"metadataCid": published["metadataCid"], "tokenId": token}
        )
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]
        url = f"{srv.url}/api/models/{model_id}/predict?top_k=3"
        photo = tmp_path / "chelsea.jpg"
        photo.write_bytes(photos["chelsea"])

        # `cidserve sign` headers, sent by httpx.
        signed = cli(
            "sign",
            "POST",
            url,
            "-H",
            "Content-Type: image/jpeg",
            "--data-file",
            str(photo),
            "--format",
            "json",
            key=user_key,
        )
        headers = json.loads(signed.stdout)
        assert headers["X-Cidserve-Address"] == user.address
        r = client.post(
            url, content=photos["chelsea"], headers={"content-type": "image/jpeg", **headers}
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["class"] in CAT_LABELS

        # The curl example script, as documented.
        if CIDSERVE_BIN.exists():
            env = {**cli.env, "CIDSERVE": str(CIDSERVE_BIN), "CIDSERVE_PRIVATE_KEY": user_key}
            proc = subprocess.run(
                ["bash", str(EXAMPLE), url, str(photo)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["predictions"][0]["class"] in CAT_LABELS
            cli.outputs.append(proc.stdout + proc.stderr)
            # The stranger's signature: the exact 403.
            env["CIDSERVE_PRIVATE_KEY"] = stranger.key.hex()
            proc = subprocess.run(
                ["bash", str(EXAMPLE), url, str(photo)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert json.loads(proc.stdout)["error"] == "No valid license"

    # Keys come from the environment only and never show up in any output.
    for out in cli.outputs:
        assert pub_key.removeprefix("0x") not in out
        assert user_key.removeprefix("0x") not in out
