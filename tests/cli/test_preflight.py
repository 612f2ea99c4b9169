"""``cidserve serve`` refuses unsafe configurations before it starts: an open control plane on
a reachable address, several workers with signed requests and no shared nonce store. The
real CLI runs in a subprocess, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.cli.preflight import PreflightError, check_serve
from services.http.control import host_of, is_loopback
from services.settings import PREFIX, Settings
from tests.harness import ServiceProcess, free_port

CIDSERVE = [sys.executable, "-m", "services.cli"]
TOKEN = "op-token-0123456789abcdef"
CHAIN = {
    "CIDSERVE_CHAIN_RPC_URL": "http://127.0.0.1:9",
    "CIDSERVE_LICENSE_CONTRACT": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test run's environment without any setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(PREFIX)}
    env.update({"CIDSERVE_DATA_DIR": str(tmp_path / "data"), "CIDSERVE_LOG_FORMAT": "text"})
    env.update(extra)
    return env


def _refused(tmp_path: Path, args: list[str], **env: str) -> str:
    """Run ``cidserve serve ...``; it must exit with 2 by itself. Returns its stderr."""
    proc = subprocess.run(
        [*CIDSERVE, "serve", *args],
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("gateway.example", False),
        ("localhost.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool):
    assert is_loopback(host) is loopback


def test_host_header_parsing():
    assert host_of("127.0.0.1:8000") == "127.0.0.1"
    assert host_of("[::1]:8000") == "::1"
    assert host_of("localhost") == "localhost"
    assert host_of("::1") == "::1"


def test_the_checks_on_settings(tmp_path: Path):
    assert check_serve(Settings(host="127.0.0.1")) == []
    assert check_serve(Settings(host="0.0.0.0", admin_token=TOKEN)) == []
    with pytest.raises(PreflightError, match="CIDSERVE_ADMIN_TOKEN"):
        check_serve(Settings(host="0.0.0.0"))
    (warning,) = check_serve(Settings(host="0.0.0.0", allow_open_control_plane=True))
    assert "open" in warning
    chain = {"chain_rpc_url": CHAIN["CIDSERVE_CHAIN_RPC_URL"]}
    chain["license_contract"] = CHAIN["CIDSERVE_LICENSE_CONTRACT"]
    with pytest.raises(PreflightError, match="CIDSERVE_REDIS_URL"):
        check_serve(Settings(workers=3, **chain))  # type: ignore[arg-type]
    assert check_serve(Settings(workers=3, redis_url="redis://127.0.0.1:6379/0", **chain)) == []  # type: ignore[arg-type]
    assert check_serve(Settings(workers=1, **chain)) == []  # type: ignore[arg-type]
    assert check_serve(Settings(workers=3)) == []  # no signed requests, nothing to replay


def test_serve_on_every_address_without_a_token_exits_naming_the_setting(tmp_path: Path):
    err = _refused(tmp_path, ["--host", "0.0.0.0", "--port", str(free_port())])
    assert "CIDSERVE_ADMIN_TOKEN" in err and "CIDSERVE_ALLOW_OPEN_CONTROL_PLANE" in err, err
    err = _refused(tmp_path, ["--port", str(free_port())], CIDSERVE_HOST="0.0.0.0")
    assert "CIDSERVE_ADMIN_TOKEN" in err, err


def test_token_file_problems_stop_start_up(tmp_path: Path):
    empty = tmp_path / "empty-token"
    empty.write_text(" \n")
    err = _refused(tmp_path, [], CIDSERVE_ADMIN_TOKEN_FILE=str(empty))
    assert "CIDSERVE_ADMIN_TOKEN_FILE" in err and "empty" in err, err
    err = _refused(tmp_path, [], CIDSERVE_ADMIN_TOKEN_FILE=str(tmp_path / "missing"))
    assert "CIDSERVE_ADMIN_TOKEN_FILE" in err and "cannot read" in err, err
    good = tmp_path / "token"
    good.write_text(TOKEN)
    err = _refused(tmp_path, [], CIDSERVE_ADMIN_TOKEN_FILE=str(good), CIDSERVE_ADMIN_TOKEN=TOKEN)
    assert "not both" in err and TOKEN not in err, err


def test_several_workers_with_signing_and_no_redis_exit_naming_redis(tmp_path: Path):
    err = _refused(tmp_path, ["--workers", "2", "--port", str(free_port())], **CHAIN)
    assert "CIDSERVE_REDIS_URL" in err and "replayed" in err, err
    err = _refused(tmp_path, ["--port", str(free_port())], CIDSERVE_WORKERS="3", **CHAIN)
    assert "CIDSERVE_REDIS_URL" in err, err


def _started(tmp_path: Path, name: str, **env: str) -> ServiceProcess:
    port = free_port()
    svc = ServiceProcess(
        [*CIDSERVE, "serve", "--host", "0.0.0.0"],
        _env(tmp_path, CIDSERVE_PORT=str(port), **env),
        tmp_path / f"{name}.log",
    )
    svc.wait_ready(timeout=60)
    return svc


def test_a_token_file_guards_the_control_plane_of_a_reachable_server(tmp_path: Path):
    token_file = tmp_path / "admin-token"
    token_file.write_text(f"\n  {TOKEN}  \n")
    svc = _started(tmp_path, "token", CIDSERVE_ADMIN_TOKEN_FILE=str(token_file))
    try:
        with httpx.Client(base_url=svc.url, timeout=10) as c:
            r = c.delete("/api/models/nothing-here")
            assert r.status_code == 401 and "CIDSERVE_ADMIN_TOKEN" in r.json()["message"]
            r = c.delete("/api/models/nothing-here", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 404, r.text
            assert c.get("/api/models").status_code == 200
    finally:
        svc.stop()
    assert TOKEN not in svc.log_path.read_text()


def test_the_opt_out_starts_open_with_a_warning(tmp_path: Path):
    svc = _started(tmp_path, "open", CIDSERVE_ALLOW_OPEN_CONTROL_PLANE="true")
    try:
        r = httpx.delete(svc.url + "/api/models/nothing-here", timeout=10)
        assert r.status_code == 404, r.text
    finally:
        svc.stop()
    log = svc.log_path.read_text()
    assert "WARNING" in log and "control plane is open" in log, log
