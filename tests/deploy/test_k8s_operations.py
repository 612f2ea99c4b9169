"""Kubernetes operations as kustomize renders them: the PrometheusRule carries exactly the alert
rules of deploy/prometheus/alerts.yml (and promtool's unit tests pass on the rendered copy),
and the pods are spread over zones and nodes and sleep in preStop before they stop.

Run as a module (``python -m tests.deploy.test_k8s_operations``) it rewrites
k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy import KUSTOMIZATIONS, one, render, run, tool

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RULE_FILE = REPO / "k8s" / "base" / "prometheusrule.yaml"
REGENERATE = "python -m tests.deploy.test_k8s_operations"


def alert_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(ALERTS.read_text())["groups"]
    return groups


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_the_prometheus_rule_carries_the_alerts_of_alerts_yml(directory: Path) -> None:
    rule = one(render(directory), "PrometheusRule")
    assert rule["spec"]["groups"] == alert_groups(), (
        f"k8s/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: {REGENERATE}"
    )
    # The Prometheus Operator evaluates it in the gateway's namespace, labelled like the rest.
    deploy = one(render(directory), "Deployment")
    assert rule["metadata"]["namespace"] == deploy["metadata"]["namespace"]
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "cidserve"


def test_promtool_tests_the_rendered_rules(tmp_path: Path) -> None:
    """The unit tests of alerts_test.yml, run on the rules as the cluster gets them."""
    (base,) = [d for d in KUSTOMIZATIONS if d.name == "base"]
    rule = one(render(base), "PrometheusRule")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    promtool = tool("promtool")
    assert "SUCCESS" in run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path).stdout
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path).stdout


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_pods_spread_over_zones_and_nodes(directory: Path) -> None:
    deploy = one(render(directory), "Deployment")
    pod = deploy["spec"]["template"]
    constraints = pod["spec"]["topologySpreadConstraints"]
    by_key = {c["topologyKey"]: c for c in constraints}
    assert set(by_key) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for key, c in by_key.items():
        # Each constraint counts the gateway's own pods, as kustomize labels them.
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert c["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
        assert c["maxSkew"] == 1, key
        # A preference, not a rule: one zone or a small cluster still schedules every pod.
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", key
        assert c["matchLabelKeys"] == ["pod-template-hash"], key


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_the_gateway_sleeps_in_prestop(directory: Path) -> None:
    deploy = one(render(directory), "Deployment")
    (container,) = [
        c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "cidserve"
    ]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and float(command[1]) > 0


def _literal_blocks(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def write_rule_file() -> None:
    """Rewrite k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml."""

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(str, _literal_blocks)
    header = "".join(
        line + "\n" for line in RULE_FILE.read_text().splitlines() if line.startswith("#")
    )
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cidserve"},
        "spec": {"groups": alert_groups()},
    }
    body = yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    RULE_FILE.write_text(header + body)


if __name__ == "__main__":
    write_rule_file()
