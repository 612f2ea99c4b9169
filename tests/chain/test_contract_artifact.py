"""The committed contract artifact matches contracts/src, and contracts/ passes `forge test`.

services/chain/ModelLicense.json is what the service and the CLI deploy and call; these tests
run the same check as CI (scripts/check-contracts.sh: a clean offline build with solcjs in a
temporary directory, then `forge test`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "scripts" / "check-contracts.sh"
ARTIFACT = ROOT / "services" / "chain" / "ModelLicense.json"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_committed_artifact_matches_the_source_and_forge_tests_pass():
    proc = _check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout


def test_a_stale_artifact_is_reported(tmp_path: Path):
    doc = json.loads(ARTIFACT.read_text())
    assert doc["contractName"] == "ModelLicense"
    assert doc["compiler"] == {
        "evmVersion": "cancun",
        "optimizer": {"enabled": True, "runs": 200},
        "solc": "0.8.37",
    }
    doc["abi"] = [item for item in doc["abi"] if item.get("name") != "licenseStatus"]
    stale = tmp_path / "ModelLicense.json"
    stale.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    proc = _check("--no-test", "--artifact", str(stale))
    assert proc.returncode != 0
    assert "does not match what contracts/src builds to" in proc.stderr
    assert "scripts/build-contracts.sh" in proc.stderr
    assert '"name": "licenseStatus"' in proc.stderr  # the diff names what is missing
