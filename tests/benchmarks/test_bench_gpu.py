"""The GPU benchmark (benchmarks/bench_gpu.py) without a GPU: on a CPU-only onnxruntime it stops
at once with the install commands and writes nothing; its parsing, arithmetic and report."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_gpu as bg
import serving_report as sr

ROOT = Path(__file__).resolve().parents[2]

SMI_QUERY = "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB\n"
SMI_BANNER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""
METRICS = """\
# HELP cidserve_batch_size Requests per session.run (dynamic batching).
# TYPE cidserve_batch_size histogram
cidserve_batch_size_bucket{le="1.0",model="m-a"} 2.0
cidserve_batch_size_bucket{le="+Inf",model="m-a"} 10.0
cidserve_batch_size_count{model="m-a"} 10.0
cidserve_batch_size_sum{model="m-a"} 64.0
cidserve_batch_size_count{model="m-b"} 3.0
cidserve_batch_size_sum{model="m-b"} 3.0
"""


@pytest.mark.skipif(bg.CUDA in ort.get_available_providers(), reason="this onnxruntime offers CUDA")
def test_without_the_cuda_provider_it_exits_2_at_once_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - t0 < 20
    assert done.returncode == 2
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "offers no CUDAExecutionProvider" in message
    assert "pip install onnxruntime-gpu" in message
    assert done.stdout == ""
    assert not out.exists()


def test_provider_problem_names_the_missing_provider_and_the_install() -> None:
    assert bg.provider_problem("1.2.3", [bg.CUDA, bg.CPU]) is None
    problem = bg.provider_problem("1.2.3", [bg.CPU])
    assert problem is not None
    assert "onnxruntime 1.2.3 offers no CUDAExecutionProvider" in problem
    assert "(it has CPUExecutionProvider)" in problem
    assert bg.INSTALL_GPU in problem


def test_nvidia_smi_output_is_read() -> None:
    assert bg.parse_gpu_query(SMI_QUERY) == [
        {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB"}
    ]
    assert bg.parse_cuda_version(SMI_BANNER) == "12.4"
    assert bg.parse_cuda_version("no banner") is None
    gpu = {"gpus": bg.parse_gpu_query(SMI_QUERY), "driver_cuda_version": "12.4", "device_id": 0}
    assert bg.gpu_text(gpu) == "NVIDIA H100 80GB HBM3 (81559 MiB), driver 550.54.15 (CUDA 12.4)"


def test_batch_totals_are_one_models_sum_and_count() -> None:
    assert bg.batch_totals(METRICS, "m-a") == (64.0, 10.0)
    assert bg.batch_totals(METRICS, "m-b") == (3.0, 3.0)
    assert bg.batch_totals(METRICS, "other") == (0.0, 0.0)


def point(
    round_: int, contender: str, path: str, c: int, p50: float, rps: float, errors: int = 0
) -> sr.Point:
    return sr.Point(
        round=round_,
        model="resnet18",
        contender=contender,
        path=path,
        input=sr.SMALL,
        concurrency=c,
        requests=100,
        duration_s=5.0,
        rps=rps,
        errors={"timeout": errors} if errors else {},
        latency_ms={"p50": p50, "p90": p50, "p99": p50},
        cores={"harness": 1.0, "client": 0.1, "server": 2.0, "other": 0.0},
    )


def rounds(raw_p50: list[float], ours_p50: list[float]) -> list[sr.Point]:
    """Three rounds; raw batch 16 does 1000 req/s, cidserve at c=16 500, 600, 900."""
    points = []
    for r, (raw, ours, rps) in enumerate(
        zip(raw_p50, ours_p50, (500, 600, 900), strict=True), start=1
    ):
        points += [
            point(r, sr.RAW, bg.RAW_SEQUENTIAL, 1, raw, 1000 / raw),
            point(r, sr.RAW, bg.RAW_BATCH, 16, 16.0, 1000.0),
            point(r, sr.CIDSERVE, bg.JSON_PATH, 1, ours, 1000 / ours),
            point(r, sr.CIDSERVE, bg.JSON_PATH, 16, 20.0, rps),
            point(r, sr.CIDSERVE, bg.JSON_PATH, 64, 80.0, rps, errors=r - 1),
        ]
    return points


def test_summary_takes_ratios_within_a_round_and_medians_over_rounds() -> None:
    # Round 2's raw is slow: the ratio of its own round (3/4), not 3 over raw's median (2).
    points = rounds([2.0, 4.0, 1.0], [2.2, 3.0, 1.5])
    batches = [bg.BatchStat(r, "resnet18", 16, 16.0 * n, 16.0) for r, n in ((1, 4), (2, 8))]
    s = bg.summarise(points, batches, "resnet18")
    assert s.raw_p50.value == 2.0 and s.cidserve_p50.value == 2.2
    assert s.p50_ratio.value == pytest.approx(1.1)  # median of 1.1, 0.75, 1.5
    assert s.raw_rps.value == 1000.0 and s.cidserve_rps.value == 600.0
    assert s.rps_ratio.value == pytest.approx(0.6)
    assert s.rows_per_run.value == 6.0
    assert s.errors_high == 3
    assert bg.summary_line(s) == (
        "| resnet18 | 2.00 | 2.20 | 1.10 | 1000.0 | 600.0 | 0.60 | 6.0 | 3 |"
    )


def test_a_model_not_measured_has_dashes() -> None:
    s = bg.summarise([], [], "efficientnet-lite0")
    assert bg.summary_line(s) == "| efficientnet-lite0 | – | – | – | – | – | – | – | – |"


def report_doc(interrupted: str | None = None) -> dict[str, object]:
    return {
        "command": ".venv/bin/python benchmarks/bench_gpu.py",
        "date_utc": "2026-01-01 00:00:00",
        "wall_s": 300.0,
        "interrupted": interrupted,
        "failures": [],
        "gpu": {"gpus": bg.parse_gpu_query(SMI_QUERY), "driver_cuda_version": "12.4"}
        | {"device_id": 0},
        "onnxruntime_build": {
            "package": "onnxruntime-gpu",
            "version": "1.22.0",
            "cuda_version": "12.8",
            "cudnn_version": "9.8",
        },
        "machine": {
            "cpu_model": "x",
            "logical_cpus": 16,
            "usable_cpus": 16,
            "memory_gb": 128,
            "kernel": "6",
            "python": "3.11",
        },
        "versions": {"onnxruntime": "1.22.0"},
        "server_env": {"CIDSERVE_EXECUTION_PROVIDER": "cuda", "CIDSERVE_BATCH_TRUSTED_CIDS": "b"},
        "server_settings": {"batch_max_size": 8},
        "config": {"rounds": 3, "duration_s": 5, "warmup_s": 2, "wrk": "4.1.0, wrk_post.lua"},
    }


def test_report_has_the_summary_table_and_every_point() -> None:
    points = rounds([2.0, 4.0, 1.0], [2.2, 3.0, 1.5])
    batches = [bg.BatchStat(1, "resnet18", 16, 64.0, 16.0)]
    summaries = [bg.summarise(points, batches, "resnet18")]
    text = bg.render(report_doc(), summaries, points, batches)
    assert "INCOMPLETE" not in text
    assert "- GPU: NVIDIA H100 80GB HBM3 (81559 MiB), driver 550.54.15 (CUDA 12.4)" in text
    assert "onnxruntime-gpu 1.22.0, built with CUDA 12.8 and cuDNN 9.8" in text
    assert "with CIDSERVE_EXECUTION_PROVIDER=cuda and both models'" in text
    assert bg.SUMMARY_HEAD[0] in text
    assert bg.summary_line(summaries[0]) in text
    assert "| 1 | resnet18 | cidserve | json | 16 | 100 | 500.0 |" in text
    assert text.count("| resnet18 |") == 1 + len(points)
    assert "| 4.0 |" in text  # requests per run of round 1 at c=16
    partial = bg.render(report_doc("interrupted (KeyboardInterrupt)"), [], [], [])
    assert partial.count("INCOMPLETE") == 1


def test_the_defaults_fit_the_time_limit_and_a_longer_plan_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = bg.parse_args([])
    assert (args.rounds, args.duration, args.warmup, args.time_limit) == (3, 5, 2, 480)
    assert args.out == "docs/benchmarks"
    with pytest.raises(SystemExit) as exc:
        bg.parse_args(["--rounds", "5", "--duration", "30"])
    assert exc.value.code == 2
    assert "over --time-limit 480 s" in capsys.readouterr().err
