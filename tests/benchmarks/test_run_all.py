"""The serving benchmark's own plumbing (benchmarks/run_all.py), without timing anything:
reading wrk's summary, the wrk command line, what ``--quick`` selects and where the raw
reference windows go around a series of points."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    assert (full.rounds, full.duration, full.warmup, full.ref_duration) == (3, 5, 1, 2.0)
    assert full.cidserve_concurrency == (1, 16, 64) and full.extras
    assert args.ref_duration == 1.0


def test_unknown_contender_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_all.parse_args(["--contenders", "raw,triton-grpc"])
    assert exc.value.code == 2
    assert "triton-grpc" in capsys.readouterr().err


class IdleServer:
    """Stands in for ``run_all.Running``: alive, idle, its CPU unknown."""

    proc = SimpleNamespace(poll=lambda: None)
    log_path = Path("/dev/null")

    def cpu_s(self) -> float | None:
        return None

    def wait_idle(self) -> None:
        pass


def test_reference_windows_sit_around_each_point_and_are_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Any] = []
    windows = iter(
        [
            run_all.RawWindow(p50_ms=10.0, rps=None, other=0.0),  # before c=1
            run_all.RawWindow(p50_ms=12.0, rps=200.0, other=0.5),  # c=1 -> c=16
            run_all.RawWindow(p50_ms=11.0, rps=180.0, other=0.0),  # after c=16
        ]
    )

    def raw_window(_bench: object, model: str, serves: set[int]) -> run_all.RawWindow:
        events.append(("raw", model, sorted(serves)))
        return next(windows)

    def run_wrk(cmd: list[str], seconds: int) -> run_all.WrkResult:
        events.append(("wrk", cmd[2], seconds))
        return run_all.WrkResult(100, float(seconds), {}, {"p50": 9.0, "p99": 12.0})

    monkeypatch.setattr(run_all, "raw_window", raw_window)
    monkeypatch.setattr(run_all, "run_wrk", run_wrk)
    monkeypatch.setattr(run_all.Bench, "check", lambda *_: {})
    args = run_all.parse_args(["--duration", "5", "--warmup", "1"])
    bench = run_all.Bench(args, tmp_path)
    req = run_all.peer_servers.Request("/p", b"{}", {}, lambda _: 0)
    names = ("m", "cidserve", "json", run_all.sr.SMALL)
    run_all.measure_series(bench, 1, names, "http://h", req, (1, 16, 64), IdleServer())  # type: ignore[arg-type]

    assert events == [
        ("raw", "m", [1]),
        ("wrk", "-c1", 1),  # warm-up
        ("wrk", "-c1", 5),
        ("raw", "m", [1, 16]),  # after c=1, before c=16
        ("wrk", "-c16", 1),
        ("wrk", "-c16", 5),
        ("raw", "m", [16]),
        ("wrk", "-c64", 1),  # c=64: no reference
        ("wrk", "-c64", 5),
    ]
    c1, c16, c64 = bench.points
    # 0.5 other cores in the shared window: disturbed, so each point keeps its clean window
    assert (c1.raw_ref_before, c1.raw_ref_after, c1.raw_ref_other) == (10.0, None, 0.0)
    assert (c16.raw_ref_before, c16.raw_ref_after, c16.raw_ref_other) == (None, 180.0, 0.0)
    assert c16.raw_ref == (180.0, False)
    assert c64.raw_ref is None and c64.raw_ref_before is None


def test_no_reference_windows_at_ref_duration_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_all, "raw_window", lambda *_: pytest.fail("no window expected"))
    monkeypatch.setattr(
        run_all, "run_wrk", lambda _cmd, s: run_all.WrkResult(10, float(s), {}, {"p50": 1.0})
    )
    monkeypatch.setattr(run_all.Bench, "check", lambda *_: {})
    bench = run_all.Bench(run_all.parse_args(["--ref-duration", "0", "--warmup", "0"]), tmp_path)
    req = run_all.peer_servers.Request("/p", b"{}", {}, lambda _: 0)
    names = ("m", "kserve", "image", run_all.sr.SMALL)
    run_all.measure_series(bench, 1, names, "http://h", req, (1, 16), IdleServer())  # type: ignore[arg-type]
    assert [p.raw_ref for p in bench.points] == [None, None]


def test_which_points_get_reference_windows(tmp_path: Path) -> None:
    bench = run_all.Bench(run_all.parse_args([]), tmp_path)
    small, large = run_all.sr.SMALL, run_all.sr.LARGE
    assert [run_all.referenced(bench, c, small) for c in (1, 16, 64)] == [True, True, False]
    assert [run_all.referenced(bench, c, large) for c in (1, 16)] == [True, False]
    off = run_all.Bench(run_all.parse_args(["--ref-duration", "0"]), tmp_path)
    assert not run_all.referenced(off, 1, small) and not run_all.referenced(off, 1, large)
