"""The Kubernetes stop sequence adds up: the pod's grace period covers the preStop sleep, the
drain delay and the drain timeout, in every overlay as kustomize renders it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.settings import Settings
from tests.deploy.test_deploy import KUSTOMIZATIONS, tool

REPO = Path(__file__).resolve().parents[2]
# Seconds for the endpoints controller and the load balancers to stop sending new requests:
# a preStop sleep shorter than this is no sleep at all.
MIN_PRESTOP_S = 3


def rendered(directory: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _setting(configmap: dict[str, Any], name: str) -> float:
    value = configmap["data"].get("CIDSERVE_" + name.upper())
    if value is not None:
        return float(value)
    return float(Settings.model_fields[name].default)


@pytest.mark.parametrize(
    "directory",
    [d for d in KUSTOMIZATIONS if "overlays" in d.parts],
    ids=lambda d: d.name,
)
def test_the_grace_period_covers_prestop_and_the_drain(directory: Path) -> None:
    objs = rendered(directory)
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    configmap = next(o for o in objs if o["kind"] == "ConfigMap")
    pod = deploy["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "cidserve")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    prestop_s = float(command[1])
    assert prestop_s >= MIN_PRESTOP_S
    drain_timeout_s = _setting(configmap, "drain_timeout_s")
    drain_delay_s = _setting(configmap, "drain_delay_s")
    grace_s = pod["terminationGracePeriodSeconds"]
    # The kubelet kills the container at the end of the grace period, preStop included.
    assert grace_s > prestop_s + drain_delay_s + drain_timeout_s, (
        f"terminationGracePeriodSeconds {grace_s} <= preStop {prestop_s} + drain delay "
        f"{drain_delay_s} + drain timeout {drain_timeout_s}"
    )
    # A request may run for the whole inference timeout: the drain waits for it.
    timeout_ms = _setting(configmap, "inference_timeout_ms")
    assert drain_timeout_s * 1000 >= timeout_ms
    # Readiness is what takes the pod out of rotation while it drains.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
