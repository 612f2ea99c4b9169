"""``cidserve --version``, ``models``, ``load`` and ``predict`` as a user runs them: a real
``cidserve`` process talking to a gateway on loopback, with the operator's token and the
signing key from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import __version__
from tests.anvil import license_chain
from tests.client.support import ADMIN, chain_settings, publish_linear, serve
from tests.conftest import CAT_LABELS
from tests.harness import free_port

CIDSERVE = [sys.executable, "-m", "services.cli"]


def cidserve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIDSERVE_")}
    return subprocess.run(
        [*CIDSERVE, *args], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def operated(workdir, store) -> Iterator[str]:
    with serve(workdir, store, admin_token=ADMIN) as url:
        yield url


def test_version():
    proc = cidserve("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cidserve {__version__}"


def test_load_and_models_with_the_operator_token_from_the_environment(operated, store, tmp_path):
    linear = publish_linear(store, tmp_path, 41)
    refused = cidserve("load", linear.metadata_cid, "--url", operated)
    assert refused.returncode == 1
    assert "401" in refused.stderr and "CIDSERVE_ADMIN_TOKEN" in refused.stderr

    proc = cidserve(
        "load",
        linear.metadata_cid,
        "--no-warmup",
        CIDSERVE_URL=operated,
        CIDSERVE_ADMIN_TOKEN=ADMIN,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == linear.model_id
    assert "loaded" in proc.stdout

    listed = cidserve("models", "--json", CIDSERVE_URL=operated)
    assert listed.returncode == 0, listed.stderr
    assert linear.model_id in [m["model_id"] for m in json.loads(listed.stdout)["models"]]
    text = cidserve("models", "--url", operated)
    assert linear.model_id in text.stdout


def test_predict_prints_the_top_classes(gateway, efficientnet, photos, tmp_path):
    jpeg = tmp_path / "chelsea.jpg"
    jpeg.write_bytes(photos["chelsea"])
    loaded = cidserve("load", efficientnet.metadata_cid, "--url", gateway.url, "--json")
    assert loaded.returncode == 0, loaded.stderr
    model_id = json.loads(loaded.stdout)["model_id"]

    proc = cidserve("predict", model_id, str(jpeg), "--top-k", "2", "--url", gateway.url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    confidence, label = lines[0].split("\t")
    assert label in CAT_LABELS and 0 < float(confidence) <= 1


def test_errors_name_the_problem_and_set_the_exit_code(gateway, tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0")
    proc = cidserve("predict", "nope-00000000", str(image), "--url", gateway.url)
    assert proc.returncode == 1
    assert "404 Model not found" in proc.stderr and "nope-00000000" in proc.stderr

    proc = cidserve("predict", "m", str(tmp_path / "missing.jpg"), "--url", gateway.url)
    assert proc.returncode == 2
    assert "missing.jpg" in proc.stderr

    proc = cidserve("models", "--url", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    assert "ConnectError" in proc.stderr

    proc = cidserve("models", "--url", "ftp://example.org")
    assert proc.returncode == 2
    assert "not an http:// or https:// URL" in proc.stderr


def test_predict_signs_with_the_key_from_the_environment(
    workdir, store, efficientnet, photos, tmp_path
):
    jpeg = tmp_path / "coffee.jpg"
    jpeg.write_bytes(photos["coffee"])
    with license_chain(tmp_path / "anvil") as chain:
        token = int(chain.client().mint(efficientnet.metadata_cid).value)
        user = chain.anvil.funded_account()
        chain.client().grant(token, user.address, chain.anvil.chain_time() + 3600)
        key = "0x" + bytes(user.key).hex()
        with serve(workdir, store, **chain_settings(chain)) as url:
            loaded = cidserve(
                "load",
                efficientnet.metadata_cid,
                "--token-id",
                str(token),
                "--url",
                url,
                CIDSERVE_ADMIN_TOKEN=ADMIN,
            )
            assert loaded.returncode == 0, loaded.stderr
            model_id = loaded.stdout.splitlines()[0]

            unsigned = cidserve("predict", model_id, str(jpeg), "--url", url)
            assert unsigned.returncode == 1
            assert "401" in unsigned.stderr

            signed = cidserve(
                "predict",
                model_id,
                str(jpeg),
                "--top-k",
                "1",
                "--url",
                url,
                CIDSERVE_PRIVATE_KEY=key,
            )
            assert signed.returncode == 0, signed.stderr
            assert signed.stdout.split("\t")[1].strip() == "espresso"
            assert key not in signed.stdout + signed.stderr


def test_a_bad_key_setting_stops_the_command_naming_it(tmp_path: Path):
    proc = cidserve("models", "--url", "http://127.0.0.1:1", CIDSERVE_PRIVATE_KEY="0x1234")
    assert proc.returncode == 2
    assert "PRIVATE_KEY" in proc.stderr and "0x1234" not in proc.stderr
