"""The side-by-side benchmark's own machinery (benchmarks/run_all.py), without timing anything:
what ``--quick`` measures, that its load generator counts failed and wrong replies as errors
over a real connection (the CI smoke run's exit status depends on it), and that the report
and the plots are written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.harness import ServerThread

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_inference as bi  # noqa: E402
import run_all  # noqa: E402


def test_quick_measures_only_raw_and_cidserve() -> None:
    args = run_all.parse_args(["--quick"])
    assert args.contenders == ["ort", "cidserve"]
    assert args.inputs == ["224x224", "tensor"]
    full = run_all.parse_args([])
    assert full.contenders == ["ort", "cidserve", "mlserver", "bentoml", "rayserve"]
    assert full.concurrency == [1, 4, 16, 64]


def test_unknown_contender_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_all.parse_args(["--contenders", "ort,triton"])
    assert exc.value.code == 2
    assert "triton" in capsys.readouterr().err


def _app() -> FastAPI:
    app = FastAPI()
    labels = ["cat", "dog"]

    @app.post("/ok")
    async def ok(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"success": True, "predictions": [{"class": labels[1]}]})

    @app.post("/fail")
    async def fail() -> JSONResponse:
        return JSONResponse({"success": False}, status_code=503)

    @app.post("/wrong")
    async def wrong() -> JSONResponse:
        return JSONResponse({"success": False, "predictions": []})

    return app


def test_load_generator_counts_errors_over_http() -> None:
    check = run_all._check_api(["cat", "dog"])
    with ServerThread(_app()) as server:
        results = {}
        for path in ("/ok", "/fail", "/wrong"):
            make = run_all.http_factory(server.port, path, b"x", {}, check)
            samples, _ = bi.closed_loop(make, 2, 0.3)
            for conn in make.clients:  # type: ignore[attr-defined]
                conn.close()
            results[path] = samples
    assert results["/ok"] and all(s.ok for s in results["/ok"])
    assert results["/fail"] and not any(s.ok for s in results["/fail"])
    assert {s.error for s in results["/fail"]} == {"HTTP 503"}
    assert results["/wrong"] and all(
        s.error and s.error.startswith("bad reply") for s in results["/wrong"]
    )


def test_report_and_plots_are_written(tmp_path: Path) -> None:
    points = []
    for path, rps in (("ort", 100.0), ("cidserve-v2", 80.0)):
        for conc in (1, 4):
            p = bi.Point("resnet18", "tensor", path, conc, requests=10, throughput_rps=rps)
            p.latency_ms = {"p50": 5.0 * conc, "p95": 6.0 * conc, "p99": 7.0 * conc}
            points.append(p)
    pngs = run_all.plot(points, tmp_path)
    assert [p.name for p in pngs] == ["comparison-resnet18-tensor.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = {
        "interrupted": None,
        "failures": [],
        "command": "run_all.py",
        "date_utc": "now",
        "wall_s": 1.0,
        "machine": {
            "cpu_model": "cpu",
            "logical_cpus": 2,
            "usable_cpus": 2,
            "memory_gb": 1,
            "kernel": "k",
            "python": "3",
        },
        "load_average_start": [0.1, 0.1, 0.1],
        "load_average_end": [0.2, 0.1, 0.1],
        "versions": {},
        "config": {"warmup_s": 1, "duration_s": 1, "load_generator": "http.client"},
        "server_settings": {"intra_op_threads": 0, "inference_workers": 1},
        "peers": {},
        "sanity": [],
    }
    text = run_all.render(doc, points)
    assert "| resnet18 | tensor | cidserve-v2 | 4 |" in text
    assert "| resnet18 | tensor | ort | 5.00 | 100.0 (1) |" in text
