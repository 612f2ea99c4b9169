"""The arithmetic of the serving benchmark's report (benchmarks/serving_report.py): ratios to
raw measured next to each point (else within a round), medians over rounds, the disturbed marks
and the targets' verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import serving_report as sr

MODEL = "efficientnet-lite0"
MACHINE = {"cpu_model": "cpu", "logical_cpus": 2, "usable_cpus": 2, "memory_gb": 1, "kernel": "k"}


def point(
    round_: int,
    contender: str,
    path: str,
    concurrency: int,
    p50: float,
    rps: float,
    *,
    p99: float | None = None,
    input_: str = sr.SMALL,
    other: float = 0.0,
    errors: int = 0,
    model: str = MODEL,
) -> sr.Point:
    return sr.Point(
        round=round_,
        model=model,
        contender=contender,
        path=path,
        input=input_,
        concurrency=concurrency,
        requests=100,
        duration_s=1.0,
        rps=rps,
        errors={"status": errors},
        latency_ms={"p50": p50, "p90": p50, "p99": p99 if p99 is not None else p50},
        cores={"other": other},
    )


def raw(round_: int, p50: float, seq_rps: float, par_rps: float, other: float = 0.0):
    return [
        point(round_, sr.RAW, sr.RAW_SEQUENTIAL, 1, p50, seq_rps, other=other),
        point(round_, sr.RAW, sr.RAW_PARALLEL, 2, p50 * 2, par_rps),
    ]


def cidserve(round_: int, path: str, p50: float, rps16: float, **kw) -> list[sr.Point]:
    return [
        point(round_, sr.CIDSERVE, path, 1, p50, 1000 / p50),
        point(round_, sr.CIDSERVE, path, 16, p50 * 10, rps16, p99=kw.get("p99", p50 * 15)),
        point(round_, sr.CIDSERVE, path, 64, p50 * 40, rps16, errors=kw.get("errors64", 0)),
    ]


def test_ratios_are_taken_within_a_round_then_the_median() -> None:
    points = [
        *raw(1, 10.0, 100.0, 150.0),
        *cidserve(1, "json", 12.0, 150.0),
        *raw(2, 20.0, 50.0, 40.0),
        *cidserve(2, "json", 20.0, 60.0),
        *raw(3, 10.0, 100.0, 120.0),
        *cidserve(3, "json", 11.0, 90.0),
    ]
    (row,) = [r for r in sr.build_rows(points) if r.contender == sr.CIDSERVE]
    # per round 1.2, 1.0, 1.1 -> 1.1; the ratio of the medians would be 12 / 10 = 1.2
    assert row.p50_over_raw.value == pytest.approx(1.1)
    assert row.p50.value == 12.0
    # raw's best per round: 150 (parallel), 50 (sequential), 120 -> 1.0, 1.2, 0.75
    assert row.rps_over_raw.value == pytest.approx(1.0)
    assert row.rps.value == 90.0
    assert row.errors_high == 0
    assert row.tail.value == pytest.approx(1.5)
    assert not row.p50.disturbed


def test_raw_rows_carry_their_own_throughput() -> None:
    rows = {r.path: r for r in sr.build_rows(raw(1, 10.0, 100.0, 150.0))}
    assert rows[sr.RAW_SEQUENTIAL].p50_over_raw.value == 1.0
    assert rows[sr.RAW_SEQUENTIAL].rps_over_raw.value == pytest.approx(100 / 150)
    assert rows[sr.RAW_PARALLEL].p50.value is None
    assert rows[sr.RAW_PARALLEL].rps_over_raw.value == 1.0


def test_a_disturbed_baseline_marks_the_ratio() -> None:
    points = [*raw(1, 10.0, 100.0, 150.0, other=0.8), *cidserve(1, "jpeg", 12.0, 150.0)]
    (row,) = [r for r in sr.build_rows(points) if r.contender == sr.CIDSERVE]
    assert row.p50_over_raw.disturbed
    assert not row.p50.disturbed
    assert row.p50_over_raw.text(2, "x") == "1.20x*"
    assert sr.Cell(None).text() == "–"


def test_targets_verdicts() -> None:
    points = [
        *raw(1, 10.0, 100.0, 150.0),
        *cidserve(1, "json", 10.0, 160.0, p99=150.0),  # tail 150 / 100 = 1.5
        *cidserve(1, "jpeg", 11.0, 140.0, errors64=3, p99=250.0),
        point(1, sr.CIDSERVE, "json", 1, 12.0, 80.0, input_=sr.LARGE),
        point(1, sr.CACHE, "json", 1, 0.8, 1200.0),
        point(1, sr.CACHE, "json", 16, 7.0, 2500.0),
    ]
    verdicts = {(v.subject, v.target): v for v in sr.targets(points, [MODEL])}
    assert verdicts[("cidserve json", "p50 at c=1 <= 1.05x raw")].met is True
    assert verdicts[("cidserve json", "req/s at c=16 >= 1.00x raw best")].met is True
    assert verdicts[("cidserve json", "p99 < 2x p50 at c=16")].met is True
    assert verdicts[("cidserve jpeg", "p50 at c=1 <= 1.05x raw")].met is False
    assert verdicts[("cidserve jpeg", "req/s at c=16 >= 1.00x raw best")].met is False
    assert verdicts[("cidserve jpeg", "no errors at c=64")].met is False
    assert verdicts[("cidserve jpeg", "p99 < 2x p50 at c=16")].met is False
    large = verdicts[("cidserve json", "1024x768 p50 <= 1.3x 224x224 (json, c=1)")]
    assert large.value.value == pytest.approx(1.2) and large.met is True
    assert verdicts[(sr.CACHE, "cache hit p50 at c=1 <= 1 ms")].met is True
    assert verdicts[(sr.CACHE, "cache hits at c=16 >= 2000/s")].met is True
    peer = verdicts[("cidserve json", "p50 at c=1 <= 0.6x the best peer's")]
    assert peer.met is None  # no peer measured
    assert verdicts[("cidserve v2", "no errors at c=64")].met is None  # v2 not measured


def test_peer_targets_take_the_best_peer_of_each_round() -> None:
    points = [*cidserve(1, "json", 10.0, 110.0)]
    for name, p50, rps in (("kserve", 20.0, 100.0), ("mlserver", 16.0, 80.0)):
        points += [
            point(1, name, sr.PEER_PATH, 1, p50, 50.0),
            point(1, name, sr.PEER_PATH, 16, p50 * 10, rps),
        ]
    points.append(point(1, "bentoml", sr.PEER_PATH, 16, 1.0, 500.0, errors=5))  # failed: ignored
    # The floor yardstick is faster than every peer but is not one: never the best peer.
    points += [
        point(1, "floor", sr.FLOOR_PATH, 1, 5.0, 200.0),
        point(1, "floor", sr.FLOOR_PATH, 16, 50.0, 400.0),
    ]
    verdicts = {v.target: v for v in sr.targets(points, [MODEL])}
    latency = verdicts["p50 at c=1 <= 0.6x the best peer's"]
    assert latency.value.value == pytest.approx(10 / 16) and latency.met is False
    throughput = verdicts["req/s at c=16 >= 1.10x the best peer's"]
    assert throughput.value.value == pytest.approx(1.1) and throughput.met is True


def test_markdown_has_a_table_per_model_and_the_targets() -> None:
    points = [*raw(1, 10.0, 100.0, 150.0), *cidserve(1, "v2", 10.0, 160.0)]
    points[-1].cores["other"] = 0.5
    doc = {
        "command": "run_all.py",
        "date_utc": "now",
        "wall_s": 1.0,
        "machine": MACHINE,
        "load_average_start": [0.5, 0.4, 0.3],
        "load_average_end": [0.6, 0.4, 0.3],
        "versions": {"onnxruntime": "1"},
        "server_settings": {"intra_op_threads": 1},
        "models": {MODEL: "EfficientNet-Lite0", "resnet18": "ResNet-18"},
        "config": {"rounds": 1, "duration_s": 1, "warmup_s": 1, "wrk": "4.1"},
        "peers": {"kserve": {"path": "KServe", "workers": 2}},
        "peer_failures": {"kserve": "RuntimeError: no venv"},
    }
    text = sr.render(doc, points, sr.targets(points, [MODEL]))
    assert "of the same round (p50 at c=1" in text  # no reference windows: ratios per round
    assert "## EfficientNet-Lite0" in text and "## ResNet-18" not in text
    assert "| cidserve | v2 | 224x224 | 10.00 | 1.00 | 160.0 | 1.07 | 150.00 | 1.50 |" in text
    assert "| 0.50* |" in text  # the disturbed c=64 point
    assert "**kserve did not start**: RuntimeError: no venv" in text
    assert (
        "| req/s at c=16 >= 1.00x raw best | efficientnet-lite0 | cidserve v2 | 1.07x | met |"
        in text
    )


def referenced(p: sr.Point, before: float | None, after: float | None, other: float = 0.0):
    p.raw_ref_before, p.raw_ref_after, p.raw_ref_other = before, after, other
    return p


def test_ratios_take_the_raw_measured_next_to_each_point() -> None:
    """The round's raw rows are from a slow minute (p50 20, 50 req/s); the references say the
    machine was fast while cidserve ran: each point is divided by its own references."""
    points = []
    for r, (ref_p50, ref_rps) in enumerate(
        [
            ((9.0, 11.0), (140.0, 160.0)),
            ((10.0, None), (None, 120.0)),
            ((12.0, 12.0), (100.0, 100.0)),
        ],
        1,
    ):
        c1, c16, c64 = cidserve(r, "json", 12.0, 150.0)
        points += [
            *raw(r, 20.0, 50.0, 40.0),
            referenced(c1, *ref_p50),
            referenced(c16, *ref_rps),
            c64,
        ]
    (row,) = [r for r in sr.build_rows(points) if r.contender == sr.CIDSERVE]
    # p50 12 over 10, 10 (one window), 12 -> 1.2, 1.2, 1.0; against the round's raw: 0.6
    assert row.p50_over_raw.value == pytest.approx(1.2)
    # req/s 150 over 150, 120, 100 -> 1.0, 1.25, 1.5; against the round's raw: 3.0
    assert row.rps_over_raw.value == pytest.approx(1.25)
    assert not row.p50_over_raw.disturbed
    # raw's own rows keep their round figures
    seq = next(r for r in sr.build_rows(points) if r.path == sr.RAW_SEQUENTIAL)
    assert seq.p50.value == 20.0 and seq.p50_over_raw.value == 1.0
    verdicts = {(v.subject, v.target): v for v in sr.targets(points, [MODEL])}
    assert verdicts[("cidserve json", "req/s at c=16 >= 1.00x raw best")].value.value == 1.25


def test_a_point_without_references_falls_back_to_its_round() -> None:
    c1, c16, c64 = cidserve(1, "jpeg", 12.0, 150.0)
    points = [*raw(1, 10.0, 100.0, 150.0), referenced(c1, 6.0, 6.0), c16, c64]
    (row,) = [r for r in sr.build_rows(points) if r.contender == sr.CIDSERVE]
    assert row.p50_over_raw.value == pytest.approx(2.0)  # its references
    assert row.rps_over_raw.value == pytest.approx(1.0)  # raw's best of the round: 150


def test_a_disturbed_reference_window_marks_the_ratio() -> None:
    c1, c16, _ = cidserve(1, "v2", 12.0, 150.0)
    points = [referenced(c1, 10.0, 10.0, other=0.8), referenced(c16, 150.0, 150.0)]
    (row,) = sr.build_rows(points)
    assert row.p50_over_raw.text(2) == "1.20*"
    assert row.rps_over_raw.text(2) == "1.00"
    assert not row.p50.disturbed


def test_peer_targets_compare_ratios_to_raw_when_referenced() -> None:
    """cidserve ran in a slow minute (raw p50 10 next to it), kserve in a fast one (raw p50 5):
    2.0x raw against 3.2x raw, not 20 ms against 16 ms."""
    c1, c16, _ = cidserve(1, "json", 20.0, 100.0)
    points = [referenced(c1, 10.0, 10.0), referenced(c16, 100.0, 100.0)]
    for name, p50, ref_p50, rps, ref_rps in (
        ("kserve", 16.0, 5.0, 120.0, 200.0),  # 3.2x raw; 0.6x raw
        ("mlserver", 30.0, 10.0, 90.0, 100.0),  # 3.0x raw: the best at c=1; 0.9x raw: at c=16
    ):
        points += [
            referenced(point(1, name, sr.PEER_PATH, 1, p50, 50.0), ref_p50, ref_p50),
            referenced(point(1, name, sr.PEER_PATH, 16, p50 * 10, rps), ref_rps, ref_rps),
        ]
    verdicts = {v.target: v for v in sr.targets(points, [MODEL])}
    assert verdicts["p50 at c=1 <= 0.6x the best peer's"].value.value == pytest.approx(2.0 / 3.0)
    throughput = verdicts["req/s at c=16 >= 1.10x the best peer's"]
    assert throughput.value.value == pytest.approx(1.0 / 0.9)
    assert throughput.met is True


def test_references_are_shown_and_old_points_still_load() -> None:
    c1, c16, c64 = cidserve(1, "json", 10.0, 160.0)
    points = [
        *raw(1, 10.0, 100.0, 150.0),
        referenced(c1, 9.5, 10.5),
        referenced(c16, 150.0, 170.0, other=0.6),
        c64,
    ]
    doc = {
        "command": "run_all.py",
        "date_utc": "now",
        "wall_s": 1.0,
        "machine": MACHINE,
        "load_average_start": [],
        "load_average_end": [],
        "versions": {},
        "server_settings": {},
        "models": {MODEL: "EfficientNet-Lite0"},
        "config": {
            "rounds": 1,
            "duration_s": 5,
            "warmup_s": 1,
            "ref_duration_s": 2.0,
            "wrk": "4.1",
        },
    }
    text = sr.render(doc, points, sr.targets(points, [MODEL]))
    assert "raw runs for 2 s just before each c=1 and c=16 point" in text
    assert "raw reference windows of 2 s" in text
    assert "| cidserve | json | 224x224 | 10.00 | 1.00 | 160.0 | 1.00* |" in text
    assert "| 9.50 / 10.50 |" in text and "| 150.0 / 170.0* |" in text
    assert c1.to_json()["raw_ref_before"] == 9.5
    # a point of an earlier serving.json, without the reference fields
    old = {k: v for k, v in c1.to_json().items() if not k.startswith("raw_ref")}
    again = sr.Point(**old)
    assert again.raw_ref is None
    (row,) = [
        r for r in sr.build_rows([*raw(1, 8.0, 100.0, 150.0), again]) if r.contender == sr.CIDSERVE
    ]
    assert row.p50_over_raw.value == pytest.approx(10.0 / 8.0)


def test_the_large_photo_is_compared_at_the_speed_of_each_point() -> None:
    """The 224x224 point ran in a slow minute (raw 9 ms next to it), the 1024x768 one in a fast
    one (raw 6 ms): each over its own raw, 12/6 against 12/9 is 1.5x, not the 1.0x of the
    plain ratio; without references the plain ratio stays."""
    c1, c16, c64 = cidserve(1, "json", 12.0, 150.0)
    large = point(1, sr.CIDSERVE, "json", 1, 12.0, 80.0, input_=sr.LARGE)
    points = [*raw(1, 9.0, 100.0, 150.0), referenced(c1, 9.0, 9.0), c16, c64]
    assert sr.large_over_small([*points, referenced(large, 6.0, 6.0)], 1, MODEL)[0] == (
        pytest.approx(1.5)
    )
    plain = point(1, sr.CIDSERVE, "json", 1, 12.0, 80.0, input_=sr.LARGE)
    assert sr.large_over_small([*points, plain], 1, MODEL)[0] == pytest.approx(1.0)
    verdicts = {v.target: v for v in sr.targets([*points, referenced(large, 6.0, 6.0)], [MODEL])}
    assert verdicts["1024x768 p50 <= 1.3x 224x224 (json, c=1)"].value.value == pytest.approx(1.5)
    # the row of the large photo has no ratio to raw (raw decodes the 224x224 photo)
    rows = sr.build_rows([*points, referenced(large, 6.0, 6.0)])
    large_row = next(r for r in rows if r.input == sr.LARGE)
    assert large_row.p50_over_raw.value is None
