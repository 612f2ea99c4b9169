"""A postprocessing kind from another distribution, found by entry point, end to end.

The plug-in is a separate distribution written into ``tmp_path`` (a ``pyproject.toml`` with
an entry point in the group ``cidserve.postprocessing`` and one module), installed with pip
into its own folder and put on ``PYTHONPATH``. Then the real CLI publishes a small ONNX model
whose metadata names the plug-in's kind, serves it, loads it and runs it: no file of cidserve
is touched, nothing is registered in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.harness import ServiceProcess, free_port
from tests.models import linear_model, linear_weights

ROOT = Path(__file__).resolve().parents[2]
CIDSERVE = [sys.executable, "-m", "services.cli"]
SEED = 5

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "cidserve-echo-sum"
version = "0.1.0"

[tool.setuptools]
py-modules = ["cidserve_echo_sum"]

[project.entry-points."cidserve.postprocessing"]
echo_sum = "cidserve_echo_sum:KIND"
"""

MODULE = '''\
"""The ``echo_sum`` postprocessing kind: the sum of the output row, times ``scale``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from postprocessing import (
    Options,
    PostprocessingKind,
    PostprocessingOptions,
    PostprocessorBase,
    Result,
)
from registry.metadata import ModelMetadata


class EchoSumOptions(PostprocessingOptions):
    kind: Literal["echo_sum"] = "echo_sum"
    scale: float = 1.0
    label: str = "sum"


class EchoSum(PostprocessorBase):
    def __init__(
        self, metadata: ModelMetadata, options: EchoSumOptions, labels: list[str] | None
    ) -> None:
        self._output = metadata.output_spec(options.output).name
        self._options = options

    def __call__(
        self, outputs: dict[str, np.ndarray], context: dict[str, Any], options: Options
    ) -> Result:
        total = float(outputs[self._output][0].sum()) * self._options.scale
        return Result(
            predictions=[{"class": self._options.label, "confidence": total, "class_id": 0}],
            details={"sum": total, "plugin": "echo_sum"},
        )


KIND = PostprocessingKind(options=EchoSumOptions, factory=EchoSum)
'''


def _install_plugin(tmp_path: Path) -> Path:
    dist = tmp_path / "echo-sum-dist"
    dist.mkdir()
    (dist / "pyproject.toml").write_text(PYPROJECT)
    (dist / "cidserve_echo_sum.py").write_text(MODULE)
    site = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "--target",
            str(site),
            str(dist),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "cidserve_echo_sum.py").exists()
    return site


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("echo-sum")
    site = _install_plugin(tmp)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    yield {
        **os.environ,
        "PYTHONPATH": path,
        "CIDSERVE_DATA_DIR": str(tmp / "data"),
    }


def _publish(
    env: dict[str, str], tmp_path: Path, post: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    model = linear_model(tmp_path / "linear.onnx", seed=SEED)
    spec = tmp_path / "post.json"
    spec.write_text(json.dumps(post))
    return subprocess.run(
        [
            *CIDSERVE,
            "publish",
            str(model),
            "--name",
            "summer",
            "--postprocessing",
            str(spec),
            "--json",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_kind_from_an_installed_distribution_is_published_served_and_run(
    plugin_env: dict[str, str], tmp_path: Path
):
    proc = _publish(plugin_env, tmp_path, {"kind": "echo_sum", "output": "y", "scale": 2.0})
    assert proc.returncode == 0, proc.stderr
    metadata_cid = json.loads(proc.stdout)["metadataCid"]

    port = free_port()
    env = {**plugin_env, "CIDSERVE_PORT": str(port)}
    svc = ServiceProcess([*CIDSERVE, "serve"], env, tmp_path / "serve.log")
    try:
        svc.wait_ready()
        client = httpx.Client(base_url=svc.url, timeout=60)

        formats = client.get("/api/inference/formats").json()
        assert "echo_sum" in formats["postprocessing_kinds"]
        assert {"classification", "detection", "score"} <= set(formats["postprocessing_kinds"])
        assert {"image", "tensor", "tabular"} <= set(formats["preprocessing_kinds"])

        r = client.post("/api/models/load", json={"metadataCid": metadata_cid, "warmup": True})
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]

        x = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
        r = client.post(
            "/api/inference/execute",
            json={
                "model_id": model_id,
                "input_data": {"format": "tensor", "content": [x.tolist()]},
                "options": {"top_k": 3},
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        w, b = linear_weights(SEED)
        expected = 2.0 * float((x @ w + b).sum())
        assert body["details"]["plugin"] == "echo_sum"
        assert body["details"]["sum"] == pytest.approx(expected, rel=1e-5)
        assert body["predictions"] == [
            {"class": "sum", "confidence": pytest.approx(expected, rel=1e-5), "class_id": 0}
        ]
        assert "plug-in" not in svc.log()  # no plug-in failed to load
    finally:
        svc.stop()


def test_cli_publish_refuses_options_the_plugin_refuses(plugin_env: dict[str, str], tmp_path: Path):
    """The kind validates its own options at publish time, naming the bad field."""
    proc = _publish(plugin_env, tmp_path, {"kind": "echo_sum", "output": "y", "scale": "big"})
    assert proc.returncode != 0
    assert "postprocessing.scale" in proc.stderr

    proc = _publish(plugin_env, tmp_path, {"kind": "echo_sum", "output": "y", "typo": 1})
    assert proc.returncode != 0
    assert "postprocessing.typo" in proc.stderr

    proc = _publish(plugin_env, tmp_path, {"kind": "no_such_kind", "output": "y"})
    assert proc.returncode != 0
    assert "postprocessing.kind" in proc.stderr
    assert "echo_sum" in proc.stderr  # the installed kinds are listed
