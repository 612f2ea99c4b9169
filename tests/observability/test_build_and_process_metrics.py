"""What runs and what it costs, as a scrape shows it: ``cidserve_build_info``, the process and
platform collectors (one process; several workers), and the renamed IPFS bytes counter with
its deprecated former name."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from prometheus_client import generate_latest

from services.observability.metrics import Metrics
from tests.conftest import Gateway
from tests.observability.test_metrics import parse, scrape, value


def test_build_info_names_the_versions_and_is_one(gateway: Gateway) -> None:
    samples = scrape(gateway.client)
    build = {
        dict(labels)["version"]: (dict(labels), v)
        for (name, labels), v in samples.items()
        if name == "cidserve_build_info"
    }
    assert len(build) == 1
    ((labels, v),) = build.values()
    assert v == 1
    assert labels == {
        "version": version("cidserve"),
        "onnxruntime": version("onnxruntime"),
        "python": platform.python_version(),
    }


def test_process_and_platform_metrics_of_the_serving_process(gateway: Gateway) -> None:
    samples = scrape(gateway.client)
    rss = value(samples, "process_resident_memory_bytes")
    assert rss > 20 * 1024 * 1024  # a Python process with ONNX Runtime imported
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_start_time_seconds") > 0
    python = {dict(lbl).get("version") for (n, lbl), _ in samples.items() if n == "python_info"}
    assert python == {platform.python_version()}


def test_two_instances_in_one_process_do_not_collide() -> None:
    """Each app registers the collectors on its own registry."""
    a, b = Metrics(), Metrics()
    for m in (a, b):
        text = generate_latest(m.registry).decode()
        assert "process_resident_memory_bytes" in text and "cidserve_build_info{" in text


def test_ipfs_bytes_are_counted_under_the_new_and_the_deprecated_name() -> None:
    m = Metrics()
    m.ipfs_bytes_fetched.inc(1000)
    m.ipfs_bytes_fetched.inc(24)
    samples = parse(generate_latest(m.registry).decode())
    assert value(samples, "cidserve_ipfs_fetched_bytes_total") == 1024
    assert value(samples, "cidserve_ipfs_bytes_fetched_total") == 1024


def test_several_workers_export_build_info_but_no_per_process_figures(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, two processes' build_info reads as one series of value
    1, and no process_* series stands for the whole instance."""
    code = (
        "import sys\n"
        "from prometheus_client import generate_latest\n"
        "from services.observability.metrics import Metrics\n"
        "m = Metrics()\n"
        "if sys.argv[1] == 'scrape':\n"
        "    sys.stdout.write(generate_latest(m.exposition_registry()).decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, "write"], env=env, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", code, "scrape"],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = parse(out)
    build = [v for (n, _), v in samples.items() if n == "cidserve_build_info"]
    assert build == [1]
    assert any(n == "python_info" for n, _ in samples)
    assert not [n for n, _ in samples if n.startswith("process_")]
