"""Versions, labels and references: ``cidserve publish``/``label``/``catalog`` write the
catalogue, and a server on the same data directory resolves ``NAME@latest``, ``NAME@VERSION``
and ``NAME@LABEL`` over ``/api`` and ``/v2``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from registry.identity import model_id_for
from registry.unixfs import canonical_cid
from services.cli.main import build_parser
from services.http.app import create_app
from services.settings import Settings, load_settings
from services.wiring import build_services
from tests.harness import ServerThread
from tests.models import linear_model


@dataclass
class Published:
    data_dir: Path
    cids: dict[str, str]  # version -> metadata CID

    def model_id(self, version: str) -> str:
        return model_id_for("lin", canonical_cid(self.cids[version]))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """A ``cidserve`` command in this process (as ``main`` runs it, leaving logging alone)."""
    args = build_parser().parse_args(list(argv))
    code = int(args.func(args, load_settings()))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Published:
    """``lin`` published three times through the CLI (1.0.0, 1.0.1, then 2.0.0), labelled."""
    data = tmp_path / "data"
    monkeypatch.setenv("CIDSERVE_DATA_DIR", str(data))
    monkeypatch.delenv("CIDSERVE_REDIS_URL", raising=False)
    monkeypatch.delenv("CIDSERVE_IPFS_API_URL", raising=False)
    models = [linear_model(tmp_path / f"lin{seed}.onnx", seed=seed) for seed in range(3)]
    cids: dict[str, str] = {}
    for path, version in ((models[0], None), (models[1], None), (models[2], "2.0.0")):
        args = ["publish", str(path), "--name", "lin", "--json"]
        if version is not None:
            args += ["--version", version]
        code, out, err = _cli(capsys, *args)
        assert code == 0, err
        doc = json.loads(out)
        cids[doc["version"]] = doc["metadataCid"]
    # Without --version: 1.0.0 for a new name, then the patch bump.
    assert sorted(cids) == ["1.0.0", "1.0.1", "2.0.0"]
    code, _, err = _cli(capsys, "label", "lin@1.0.0", "stable")
    assert code == 0, err
    return Published(data, cids)


@pytest.fixture
def server(published: Published) -> Iterator[httpx.Client]:
    settings = Settings(data_dir=published.data_dir, prediction_cache=False)  # type: ignore[call-arg]
    services = build_services(settings)
    with (
        ServerThread(create_app(settings, services)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        yield client


def _load(client: httpx.Client, body: dict[str, object]) -> httpx.Response:
    return client.post("/api/models/load", json={"warmup": False, **body})


def test_cli_refuses_an_existing_version_and_lists_the_catalogue(
    published: Published, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    again = linear_model(tmp_path / "again.onnx", seed=9)
    code, _, err = _cli(capsys, "publish", str(again), "--name", "lin", "--version", "1.0.1")
    assert code == 1 and "lin@1.0.1 exists" in err
    code, out, err = _cli(capsys, "publish", str(again), "--name", "lin", "--json")
    assert code == 0, err
    assert json.loads(out)["version"] == "2.0.1"  # the newest, bumped

    code, out, _ = _cli(capsys, "catalog", "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["name"] == "lin" and entry["latest"] == "2.0.1"
    assert [v["version"] for v in entry["versions"]] == ["1.0.0", "1.0.1", "2.0.0", "2.0.1"]
    assert entry["labels"] == {"stable": "1.0.0"}
    code, out, _ = _cli(capsys, "catalog")
    assert "1.0.0  " in out and "[stable]" in out

    code, _, err = _cli(capsys, "label", "lin@7.7.7", "beta")
    assert code == 1 and "'7.7.7'" in err
    code, _, err = _cli(capsys, "label", "nope@1.0.0", "beta")
    assert code == 1 and "'nope'" in err
    code, _, err = _cli(capsys, "catalog", "nope")
    assert code == 1 and "'nope'" in err


def test_load_by_reference_and_list_versions(published: Published, server: httpx.Client) -> None:
    r = _load(server, {"model": "lin@latest"})
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == published.model_id("2.0.0")
    r = _load(server, {"model": "lin@stable"})
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == published.model_id("1.0.0")
    r = _load(server, {"model": "lin@1.0.1"})
    assert r.json()["model_id"] == published.model_id("1.0.1")

    r = server.get("/api/models/lin/versions")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["latest"] == "2.0.0" and doc["labels"] == {"stable": "1.0.0"}
    rows = {v["version"]: v for v in doc["versions"]}
    assert list(rows) == ["1.0.0", "1.0.1", "2.0.0"]
    assert rows["1.0.0"]["labels"] == ["stable"]
    assert rows["2.0.0"]["metadataCid"] == published.cids["2.0.0"]
    assert all(v["loaded"] for v in rows.values())
    server.delete(f"/api/models/{published.model_id('1.0.1')}")
    rows = {v["version"]: v for v in server.get("/api/models/lin/versions").json()["versions"]}
    assert not rows["1.0.1"]["loaded"] and rows["2.0.0"]["loaded"]


def test_unknown_references_are_404s_naming_them(server: httpx.Client) -> None:
    for ref, named in (("nope@latest", "'nope'"), ("lin@9.9.9", "'9.9.9'"), ("lin@beta", "'beta'")):
        r = _load(server, {"model": ref})
        assert r.status_code == 404, r.text
        assert named in r.text
    r = server.get("/api/models/nope/versions")
    assert r.status_code == 404 and "'nope'" in r.text
    # Exactly one of metadataCid and model; a malformed reference names the problem.
    assert _load(server, {}).status_code in (400, 422)
    r = _load(server, {"model": "lin@latest", "metadataCid": "bafyx"})
    assert r.status_code in (400, 422) and "exactly one" in r.text
    r = _load(server, {"model": "lin@a b"})
    assert r.status_code == 400 and "NAME@latest" in r.text


def test_v2_resolves_latest_versions_and_labels(
    published: Published, server: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    # A catalogued name never loaded here: the repository load takes its newest version.
    r = server.post("/v2/repository/models/lin/load", json={})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["version"]) == (published.model_id("2.0.0"), "2.0.0")
    assert _load(server, {"model": "lin@1.0.0"}).status_code == 200
    # 1.0.0 loaded (and bound) last: the plain name follows the operator's latest load, but
    # latest is still the newest version.
    r = server.get("/v2/models/lin/ready")
    assert r.json()["name"] == published.model_id("1.0.0")
    r = server.get("/v2/models/lin/versions/latest/ready")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == published.model_id("2.0.0")
    r = server.get("/v2/models/lin/versions/stable")
    assert r.status_code == 200 and r.json()["name"] == published.model_id("1.0.0")
    infer = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
    r = server.post("/v2/models/lin/versions/latest/infer", json=infer)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == published.model_id("2.0.0")

    # Moving the label moves what the server resolves, at once.
    code, out, err = _cli(capsys, "label", "lin@2.0.0", "stable")
    assert code == 0, err
    assert "lin@stable -> 2.0.0 (was 1.0.0)" in out
    r = server.get("/v2/models/lin/versions/stable/ready")
    assert r.json()["name"] == published.model_id("2.0.0")
    r = server.get("/v2/models/lin/versions/nightly")
    assert r.status_code == 404 and "'nightly'" in r.text


def test_cli_load_takes_a_reference_and_models_shows_the_catalogue(
    published: Published, server: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(server.base_url)
    code, out, err = _cli(capsys, "load", "lin@stable", "--url", url)
    assert code == 0, err
    assert out.splitlines()[0] == published.model_id("1.0.0")
    code, out, err = _cli(capsys, "models", "--url", url)
    assert code == 0, err
    assert published.model_id("1.0.0") in out  # the server's models
    assert "lin  (latest 2.0.0)" in out and "[stable]" in out  # the catalogue
