"""The serving benchmark's own plumbing (benchmarks/run_all.py), without timing anything:
reading wrk's summary, the wrk command line and what ``--quick`` selects."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run_all

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/api/inference/execute
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.07ms    1.10ms  20.00ms   90.00%
  198 requests in 2.00s, 100.00KB read
  Non-2xx or 3xx responses: 3
Requests/sec:     99.00
Transfer/sec:     50.00KB
WRK_JSON {"requests": 198, "duration_us": 2000000, "bytes": 102400, "errors": {"connect": 0, \
"read": 0, "write": 0, "status": 3, "timeout": 1}, "statuses": {"503": 2, "500": 1}, \
"latency_ms": {"p50": 9.800, "p90": 11.200, \
"p99": 19.500, "mean": 10.070, "max": 20.000}}
"""


def test_wrk_summary_is_read_from_its_json_line() -> None:
    result = run_all.parse_wrk(WRK_OUTPUT)
    assert result.requests == 198
    assert result.duration_s == 2.0
    assert result.rps == 99.0
    assert result.errors == {
        "connect": 0,
        "read": 0,
        "write": 0,
        "timeout": 1,
        "HTTP 500": 1,
        "HTTP 503": 2,
    }
    assert result.latency_ms["p50"] == 9.8 and result.latency_ms["p99"] == 19.5


def test_wrk_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="WRK_JSON"):
        run_all.parse_wrk("Running 2s test @ http://127.0.0.1:1/\n")


def test_wrk_command_uses_one_thread_at_c1_and_two_above(tmp_path: Path) -> None:
    body = tmp_path / "body"
    one = run_all.wrk_command("http://h/p", {"Content-Type": "image/jpeg"}, body, 1, 5)
    assert one[:4] == ["wrk", "-t1", "-c1", "-d5s"]
    assert one[-3:] == ["http://h/p", "--", str(body)]
    assert "Content-Type: image/jpeg" in one
    assert run_all.wrk_command("http://h/p", {}, body, 16, 5)[1:3] == ["-t2", "-c16"]


def test_quick_selects_raw_and_cidserve_on_one_model() -> None:
    args = run_all.parse_args(["--quick"])
    assert args.contenders == ["raw", "cidserve"]
    assert args.models == ["efficientnet-lite0"]
    assert (args.rounds, args.cidserve_concurrency, args.extras) == (1, (1, 16), False)
    full = run_all.parse_args(["--contenders", "cidserve,raw"])
    assert full.contenders == ["raw", "cidserve"]  # raw always first: ratios are per round
    assert (full.rounds, full.duration, full.warmup) == (3, 5, 2)
    assert full.cidserve_concurrency == (1, 16, 64) and full.extras


def test_unknown_contender_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_all.parse_args(["--contenders", "raw,triton-grpc"])
    assert exc.value.code == 2
    assert "triton-grpc" in capsys.readouterr().err
