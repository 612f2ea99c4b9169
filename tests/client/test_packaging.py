"""The client is its own light distribution: httpx and pydantic only (signing as an extra),
nothing from the server package, and it is what the project installs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
HEAVY = ("onnxruntime", "onnx", "torch", "web3", "numpy", "fastapi", "uvicorn")
SERVER = ("services", "registry", "preprocessing", "postprocessing")


def _names(requirements: list[str]) -> set[str]:
    out = set()
    for req in requirements:
        name = req.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        out.add(name.lower())
    return out


def test_the_distribution_depends_on_httpx_and_pydantic_and_signs_with_an_extra():
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "cidserve-client"
    assert _names(project["dependencies"]) == {"httpx", "pydantic"}
    assert _names(project["optional-dependencies"]["signing"]) == {"eth-account", "coincurve"}
    installed = metadata.metadata("cidserve-client")
    assert installed["Version"] == project["version"]
    assert _names(metadata.requires("cidserve-client") or []) <= {
        "httpx",
        "pydantic",
        "eth-account",
        "coincurve",
    }


def test_no_module_of_the_client_imports_the_server():
    for path in (CLIENT / "cidserve_client").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert not set(roots) & {*SERVER, *HEAVY}, (path.name, roots)


def test_importing_the_client_loads_nothing_heavy():
    code = (
        "import json, sys, cidserve_client; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert "cidserve_client" in loaded
    assert not loaded & {*SERVER, *HEAVY, "eth_account"}, loaded & {*SERVER, *HEAVY}


def test_make_installs_the_client_for_the_tests_and_only_the_server_to_run():
    makefile = (ROOT / "Makefile").read_text()
    assert "-e 'clients/python[signing]'" in makefile
    run_install = makefile.split("$(RUN_STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "'.[export]'" in run_install and "dev" not in run_install
