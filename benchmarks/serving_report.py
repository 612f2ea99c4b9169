"""The arithmetic and the report of ``run_all.py``: measured points, their ratios to raw ONNX
Runtime measured next to them, medians over rounds, the targets' verdicts and the markdown.

Everything here is pure (no I/O, no clock), so it is tested on its own
(``tests/benchmarks/test_serving_report.py``).

Vocabulary:

* a *point* is one measurement: one contender, path, model, input and concurrency, in one round;
* a *series* is the same point over every round;
* the *raw baseline* of a round and model is raw ONNX Runtime on the 224x224 JPEG in that
  round: its p50 (one session of 2 intra-op threads, sequential) and its best throughput (that
  session sequential, or two 1-thread sessions in parallel, whichever is higher);
* a point's *raw reference* is the same figure (the p50 for a c=1 point, the best req/s for a
  c=16 point) measured in two short windows, one just before the point and one just after it;
  its ratio to raw is its figure over the mean of the two (over the clean one alone when
  other processes disturbed only one of them). The machine's speed can change
  within a round, so a point without a reference (raw's own rows, the cache-hit lines, c=64,
  files from before references existed) falls back to the raw baseline of its round.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DISTURBED_CORES = 0.3  # other processes above this during a point: the point is disturbed

RAW = "raw"
RAW_SEQUENTIAL = "2 threads"
RAW_PARALLEL = "2x1 thread"
CIDSERVE = "cidserve"
CACHE = "cidserve, cache hit"
CIDSERVE_PATHS = ("json", "jpeg", "v2")
PEER_PATH = "image"
FLOOR_PATH = "floor"  # the floor's series: measured as a peer's, never ranked among them
SMALL = "224x224"
LARGE = "1024x768"
LATENCY_C = 1
LOAD_C = 16
HIGH_C = 64

# Targets.
P50_OVER_RAW_MAX = 1.05
RPS_OVER_RAW_MIN = 1.00
TAIL_MAX = 2.0  # p99 / p50 at c=16, strictly below
LARGE_OVER_SMALL_MAX = 1.3
CACHE_P50_MAX_MS = 1.0
CACHE_RPS_MIN = 2000.0
P50_OVER_BEST_PEER_MAX = 0.6
RPS_OVER_BEST_PEER_MIN = {"efficientnet-lite0": 1.10, "resnet18": 1.05}


@dataclass(slots=True)
class Point:
    """One measurement. ``cores``: CPU used during it, in cores, by ``harness`` (this process;
    for raw the work itself), ``client`` (wrk), ``server`` and ``other`` (everything else on the
    machine); ``load_average``: the 1-minute load average at its end. ``raw_ref_before`` and
    ``raw_ref_after``: raw's figure in the reference windows just before and just after the
    point (c=1: p50 in ms; c=16: best req/s), None where none was taken; ``raw_ref_other``: the
    most *other* cores during those windows."""

    round: int
    model: str
    contender: str
    path: str
    input: str
    concurrency: int
    requests: int
    duration_s: float
    rps: float
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    cores: dict[str, float | None] = field(default_factory=dict)
    load_average: float | None = None
    raw_ref_before: float | None = None
    raw_ref_after: float | None = None
    raw_ref_other: float | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def disturbed(self) -> bool:
        return (self.cores.get("other") or 0.0) > DISTURBED_CORES

    @property
    def p50(self) -> float | None:
        return self.latency_ms.get("p50")

    @property
    def raw_ref(self) -> Sample | None:
        """The mean of the reference windows' figures (disturbed when a window was), or None
        without any."""
        figures = [v for v in (self.raw_ref_before, self.raw_ref_after) if v is not None]
        if not figures:
            return None
        return statistics.fmean(figures), (self.raw_ref_other or 0.0) > DISTURBED_CORES

    def series(self) -> tuple[str, str, str, str]:
        return (self.model, self.contender, self.path, self.input)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- medians


@dataclass(frozen=True, slots=True)
class Cell:
    """A median over rounds; ``disturbed`` when any point it comes from was."""

    value: float | None
    disturbed: bool = False

    def text(self, digits: int = 1, suffix: str = "") -> str:
        if self.value is None:
            return "–"
        return f"{self.value:.{digits}f}{suffix}" + ("*" if self.disturbed else "")


Sample = tuple[float | None, bool]  # (one round's value, disturbed)


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def cell(samples: Iterable[Sample]) -> Cell:
    """The median of the rounds that have a value."""
    kept = [(v, d) for v, d in samples if v is not None]
    return Cell(median(v for v, _ in kept), any(d for _, d in kept))


def ratio(numerator: Sample, denominator: Sample) -> Sample:
    (a, da), (b, db) = numerator, denominator
    if a is None or not b:
        return None, False
    return a / b, da or db


# --------------------------------------------------------------------------- lookups


def find(
    points: list[Point],
    round_: int,
    model: str,
    contender: str,
    path: str,
    concurrency: int,
    input_: str = SMALL,
) -> Point | None:
    for p in points:
        if (p.round, p.model, p.contender, p.path, p.input, p.concurrency) == (
            round_,
            model,
            contender,
            path,
            input_,
            concurrency,
        ):
            return p
    return None


def rounds_of(points: list[Point]) -> list[int]:
    return sorted({p.round for p in points})


def raw_p50(points: list[Point], round_: int, model: str, input_: str = SMALL) -> Sample:
    p = find(points, round_, model, RAW, RAW_SEQUENTIAL, LATENCY_C, input_)
    return (p.p50, p.disturbed) if p else (None, False)


def raw_best_rps(points: list[Point], round_: int, model: str, input_: str = SMALL) -> Sample:
    raw = [
        p
        for p in points
        if (p.round, p.model, p.contender, p.input) == (round_, model, RAW, input_)
    ]
    if not raw:
        return None, False
    best = max(raw, key=lambda p: p.rps)
    return best.rps, best.disturbed


def raw_p50_for(points: list[Point], p: Point) -> Sample:
    """The raw p50 that ``p``'s p50 is divided by: its reference windows' at c=1, else the
    raw baseline of its round."""
    ref = p.raw_ref if p.concurrency == LATENCY_C and p.input == SMALL else None
    return ref or raw_p50(points, p.round, p.model, p.input)


def raw_rps_for(points: list[Point], p: Point) -> Sample:
    """The raw req/s that ``p``'s req/s is divided by: its reference windows' at c=16, else
    the raw baseline's best of its round."""
    ref = p.raw_ref if p.concurrency == LOAD_C else None
    return ref or raw_best_rps(points, p.round, p.model, p.input)


def p50_over_raw(points: list[Point], p: Point | None) -> Sample:
    """``p``'s p50 over raw's (see ``raw_p50_for``)."""
    return ratio(latency_sample(p), raw_p50_for(points, p)) if p else (None, False)


def rps_over_raw(points: list[Point], p: Point | None) -> Sample:
    """``p``'s req/s over raw's (see ``raw_rps_for``)."""
    return ratio(rps_sample(p), raw_rps_for(points, p)) if p else (None, False)


def latency_sample(p: Point | None) -> Sample:
    return (p.p50, p.disturbed) if p else (None, False)


def rps_sample(p: Point | None) -> Sample:
    return (p.rps, p.disturbed) if p else (None, False)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class Row:
    """One series summarised: medians over rounds of the absolute figures and of the
    per-round ratios. For raw, the throughput columns hold the configuration's own req/s."""

    model: str
    contender: str
    path: str
    input: str
    p50: Cell
    p50_over_raw: Cell
    rps: Cell
    rps_over_raw: Cell
    p99: Cell
    tail: Cell  # p99 / p50 at c=16
    rps_high: Cell
    errors_high: int | None
    other_max: float | None
    load_max: float | None

    @classmethod
    def empty(cls, model: str, contender: str, path: str, input_: str) -> Row:
        """A series that was not measured."""
        none = Cell(None)
        return cls(
            model,
            contender,
            path,
            input_,
            none,
            none,
            none,
            none,
            none,
            none,
            none,
            None,
            None,
            None,
        )


def build_rows(points: list[Point]) -> list[Row]:
    """One row per series, in the order the series were first measured."""
    series = list(dict.fromkeys(p.series() for p in points))
    return [_row(points, key) for key in series]


def _row(points: list[Point], key: tuple[str, str, str, str]) -> Row:
    model, contender, path, input_ = key
    mine = [p for p in points if p.series() == key]
    at = {c: [p for p in mine if p.concurrency == c] for c in {p.concurrency for p in mine}}
    latency = at.get(LATENCY_C, [])
    load = mine if contender == RAW else at.get(LOAD_C, [])
    high = at.get(HIGH_C, [])
    others = [p.cores.get("other") for p in mine]
    loads = [p.load_average for p in mine]
    return Row(
        model=model,
        contender=contender,
        path=path,
        input=input_,
        p50=cell(latency_sample(p) for p in latency),
        p50_over_raw=cell(p50_over_raw(points, p) for p in latency),
        rps=cell(rps_sample(p) for p in load),
        rps_over_raw=cell(rps_over_raw(points, p) for p in load),
        p99=cell((p.latency_ms.get("p99"), p.disturbed) for p in load if contender != RAW),
        tail=cell(
            ratio((p.latency_ms.get("p99"), p.disturbed), latency_sample(p))
            for p in load
            if contender != RAW
        ),
        rps_high=cell(rps_sample(p) for p in high),
        errors_high=sum(p.error_count for p in high) if high else None,
        other_max=max((o for o in others if o is not None), default=None),
        load_max=max((a for a in loads if a is not None), default=None),
    )


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    model: str
    subject: str
    value: Cell
    unit: str
    met: bool | None  # None: not measured

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "model": self.model,
            "subject": self.subject,
            "median": self.value.value,
            "disturbed": self.value.disturbed,
            "met": self.met,
        }


def verdict(
    target: str,
    model: str,
    subject: str,
    value: Cell,
    unit: str,
    test: Callable[[float], bool],
) -> Verdict:
    met = None if value.value is None else test(value.value)
    return Verdict(target, model, subject, value, unit, met)


def targets(points: list[Point], models: list[str]) -> list[Verdict]:
    """Every target, per model where it is per model, from the medians of ``points``; those
    without figures are "not measured". None when cidserve was not measured at all."""
    if not any(p.contender == CIDSERVE for p in points):
        return []
    rows = {(r.model, r.contender, r.path, r.input): r for r in build_rows(points)}
    out: list[Verdict] = []
    for model in models:
        for path in CIDSERVE_PATHS:
            key = (model, CIDSERVE, path, SMALL)
            out += _path_targets(rows.get(key) or Row.empty(*key))
        out += _large_input_target(points, model)
        out += _peer_targets(points, model)
    cache = next((r for r in rows.values() if r.contender == CACHE), None)
    out += _cache_targets(cache or Row.empty(models[0], CACHE, "json", SMALL))
    return out


def _path_targets(row: Row) -> list[Verdict]:
    subject = f"cidserve {row.path}"
    errors = Cell(None if row.errors_high is None else float(row.errors_high))
    return [
        verdict(
            f"p50 at c=1 <= {P50_OVER_RAW_MAX:.2f}x raw",
            row.model,
            subject,
            row.p50_over_raw,
            "x",
            lambda v: v <= P50_OVER_RAW_MAX,
        ),
        verdict(
            f"req/s at c=16 >= {RPS_OVER_RAW_MIN:.2f}x raw best",
            row.model,
            subject,
            row.rps_over_raw,
            "x",
            lambda v: v >= RPS_OVER_RAW_MIN,
        ),
        verdict("no errors at c=64", row.model, subject, errors, " errors", lambda v: v == 0),
        verdict(
            f"p99 < {TAIL_MAX:.0f}x p50 at c=16",
            row.model,
            subject,
            row.tail,
            "x",
            lambda v: v < TAIL_MAX,
        ),
    ]


def large_over_small(points: list[Point], round_: int, model: str) -> Sample:
    """The 1024x768 photo's p50 over the 224x224 one's (json, c=1) in a round: each over raw
    measured next to it when both have reference windows (a change of the machine's speed
    between the two points cancels out), else the plain ratio of the two."""
    large = find(points, round_, model, CIDSERVE, "json", LATENCY_C, LARGE)
    small = find(points, round_, model, CIDSERVE, "json", LATENCY_C, SMALL)
    if large is not None and small is not None and large.raw_ref and small.raw_ref:
        return ratio(
            ratio(latency_sample(large), large.raw_ref),
            ratio(latency_sample(small), small.raw_ref),
        )
    return ratio(latency_sample(large), latency_sample(small))


def _large_input_target(points: list[Point], model: str) -> list[Verdict]:
    samples = [large_over_small(points, r, model) for r in rounds_of(points)]
    return [
        verdict(
            f"{LARGE} p50 <= {LARGE_OVER_SMALL_MAX}x {SMALL} (json, c=1)",
            model,
            "cidserve json",
            cell(samples),
            "x",
            lambda v: v <= LARGE_OVER_SMALL_MAX,
        )
    ]


def _cache_targets(row: Row) -> list[Verdict]:
    return [
        verdict(
            f"cache hit p50 at c=1 <= {CACHE_P50_MAX_MS:.0f} ms",
            row.model,
            CACHE,
            row.p50,
            " ms",
            lambda v: v <= CACHE_P50_MAX_MS,
        ),
        verdict(
            f"cache hits at c=16 >= {CACHE_RPS_MIN:.0f}/s",
            row.model,
            CACHE,
            row.rps,
            " req/s",
            lambda v: v >= CACHE_RPS_MIN,
        ),
    ]


def _best_peer(points: list[Point], round_: int, model: str, concurrency: int) -> list[Point]:
    return [
        p
        for p in points
        if (p.round, p.model, p.path, p.input, p.concurrency)
        == (round_, model, PEER_PATH, SMALL, concurrency)
        and p.error_count == 0
    ]


Figure = Callable[[Point | None], Sample]
OverRaw = Callable[[list[Point], Point | None], Sample]


def _versus(
    points: list[Point], mine: Point | None, peer: Point | None, figure: Figure, over_raw: OverRaw
) -> Sample:
    """cidserve's figure over a peer's. When both points have a raw reference, the ratio of
    their ratios to raw (each taken against raw measured next to it, so a change of the
    machine's speed between the two points cancels out); else the ratio of the figures."""
    if mine is not None and peer is not None and None not in (mine.raw_ref, peer.raw_ref):
        return ratio(over_raw(points, mine), over_raw(points, peer))
    return ratio(figure(mine), figure(peer))


def _ranking(
    points: list[Point], peers: list[Point], figure: Figure, over_raw: OverRaw, missing: float
) -> Callable[[Point], float]:
    """The key the peers of one round are ranked by: their ratio to raw when every one has a
    raw reference, else the figure itself; ``missing`` where there is no value."""
    normalised = bool(peers) and all(p.raw_ref is not None for p in peers)

    def key(p: Point) -> float:
        value = over_raw(points, p)[0] if normalised else figure(p)[0]
        return missing if value is None else value

    return key


def _peer_targets(points: list[Point], model: str) -> list[Verdict]:
    p50_samples: list[Sample] = []
    rps_samples: list[Sample] = []
    for r in rounds_of(points):
        peers_c1 = _best_peer(points, r, model, LATENCY_C)
        peers_c16 = _best_peer(points, r, model, LOAD_C)
        inf = float("inf")
        fastest = min(
            peers_c1,
            key=_ranking(points, peers_c1, latency_sample, p50_over_raw, inf),
            default=None,
        )
        busiest = max(
            peers_c16,
            key=_ranking(points, peers_c16, rps_sample, rps_over_raw, -inf),
            default=None,
        )
        mine_c1 = find(points, r, model, CIDSERVE, "json", LATENCY_C)
        mine_c16 = find(points, r, model, CIDSERVE, "json", LOAD_C)
        p50_samples.append(_versus(points, mine_c1, fastest, latency_sample, p50_over_raw))
        rps_samples.append(_versus(points, mine_c16, busiest, rps_sample, rps_over_raw))
    rps_min = RPS_OVER_BEST_PEER_MIN.get(model, max(RPS_OVER_BEST_PEER_MIN.values()))
    return [
        verdict(
            f"p50 at c=1 <= {P50_OVER_BEST_PEER_MAX}x the best peer's",
            model,
            "cidserve json",
            cell(p50_samples),
            "x",
            lambda v: v <= P50_OVER_BEST_PEER_MAX,
        ),
        verdict(
            f"req/s at c=16 >= {rps_min:.2f}x the best peer's",
            model,
            "cidserve json",
            cell(rps_samples),
            "x",
            lambda v: v >= rps_min,
        ),
    ]


# --------------------------------------------------------------------------- markdown


def _cores(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _row_line(row: Row) -> str:
    other = _cores(row.other_max) + ("*" if (row.other_max or 0.0) > DISTURBED_CORES else "")
    cells = [
        row.contender,
        row.path,
        row.input,
        row.p50.text(2),
        row.p50_over_raw.text(2),
        row.rps.text(1),
        row.rps_over_raw.text(2),
        row.p99.text(2),
        row.tail.text(2),
        row.rps_high.text(1),
        "–" if row.errors_high is None else str(row.errors_high),
        other,
        "–" if row.load_max is None else f"{row.load_max:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = [
    "| contender | path | input | p50 c=1 ms | × raw | req/s c=16 | × raw best "
    "| p99 c=16 ms | p99/p50 c=16 | req/s c=64 | errors c=64 | other cores | load |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def _verdict_line(v: Verdict) -> str:
    state = {True: "met", False: "**not met**", None: "not measured"}[v.met]
    digits = 2 if v.unit in ("x", " ms") else 0
    return f"| {v.target} | {v.model} | {v.subject} | {v.value.text(digits, v.unit)} | {state} |"


def _reference(p: Point) -> str:
    """``before / after``: raw's figure in the point's reference windows (p50 in ms at c=1,
    best req/s at c=16), ``*`` when a window was disturbed; ``–`` without any."""
    ref = p.raw_ref
    if ref is None:
        return "–"
    digits = 2 if p.concurrency == LATENCY_C else 1
    figures = (p.raw_ref_before, p.raw_ref_after)
    text = " / ".join("–" if v is None else f"{v:.{digits}f}" for v in figures)
    return text + ("*" if ref[1] else "")


def _point_line(p: Point) -> str:
    lat = p.latency_ms
    errors = ", ".join(f"{k} {n}" for k, n in p.errors.items() if n) or "0"
    cores = [_cores(p.cores.get(k)) for k in ("harness", "client", "server")]
    other = _cores(p.cores.get("other")) + ("*" if p.disturbed else "")
    load = "–" if p.load_average is None else f"{p.load_average:.1f}"
    cells = [
        str(p.round),
        p.model,
        p.contender,
        p.path,
        p.input,
        str(p.concurrency),
        str(p.requests),
        f"{p.rps:.1f}",
        *(f"{lat[k]:.2f}" if k in lat else "–" for k in ("p50", "p90", "p99")),
        _reference(p),
        errors,
        *cores,
        other,
        load,
    ]
    return "| " + " | ".join(cells) + " |"


def render(doc: dict[str, Any], points: list[Point], verdicts: list[Verdict]) -> str:
    """The markdown report: header, one table per model, the targets, every point."""
    lines = [
        "# Serving benchmark: cidserve, raw ONNX Runtime and peer servers",
        "",
        *([f"**INCOMPLETE: {doc['interrupted']}.**", ""] if doc.get("interrupted") else []),
        *([f"**Failures: {'; '.join(doc['failures'])}**", ""] if doc.get("failures") else []),
        *_header(doc),
        "",
        *_legend(doc, {p.contender for p in points}, any(p.raw_ref for p in points)),
    ]
    rows = build_rows(points)
    for model, description in doc["models"].items():
        mine = [r for r in rows if r.model == model]
        if mine:
            lines += ["", f"## {description}", "", *TABLE_HEAD, *map(_row_line, mine)]
    lines += [
        "",
        "## Targets",
        "",
        "Medians over rounds of the per-round figures above (`*`: from a disturbed point).",
        "",
        "| target | model | subject | median | verdict |",
        "| --- | --- | --- | ---: | --- |",
        *map(_verdict_line, verdicts),
        "",
        "## Every point",
        "",
        "*raw before / after*: raw ONNX Runtime in the reference windows just before and just "
        "after the point (c=1: its p50 in ms; c=16: its best req/s; `*`: a window was "
        "disturbed). Cores: *harness* = this process (for raw the work itself), *client* = wrk, "
        "*server* = the server's process group and descendants, *other* = the rest of the "
        "machine.",
        "",
        "| round | model | contender | path | input | c | requests | req/s | p50 | p90 | p99 "
        "| raw before / after | errors | harness | client | server | other | load |",
        "| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
        "| ---: | ---: | ---: | ---: | ---: |",
        *map(_point_line, points),
    ]
    return "\n".join(lines) + "\n"


def _header(doc: dict[str, Any]) -> list[str]:
    m, cfg = doc["machine"], doc["config"]
    lines = [
        f"- command: `{doc['command']}`",
        f"- date (UTC): {doc['date_utc']}; wall time {doc['wall_s']} s",
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} "
        f"usable), {m['memory_gb']} GB RAM, kernel {m['kernel']}; load average (1/5/15 min) "
        f"{_loads(doc['load_average_start'])} at the start, "
        f"{_loads(doc['load_average_end'])} at the end",
        f"- versions: {_versions(doc['versions'])}",
        "- cidserve: `cidserve serve` with the defaults of this run "
        f"({', '.join(f'{k}={v}' for k, v in doc['server_settings'].items())}); prediction "
        "cache off (`CIDSERVE_PREDICTION_CACHE=false`, models published with "
        "`cache_predictions: false`) except on the cache-hit lines",
        f"- {cfg['rounds']} round(s); per point {cfg['warmup_s']} s of warm-up (not counted), "
        f"then {cfg['duration_s']} s measured; wrk {cfg['wrk']} (1 thread at c=1, 2 above)"
        + (
            f"; raw reference windows of {cfg['ref_duration_s']:g} s"
            if cfg.get("ref_duration_s")
            else ""
        ),
    ]
    for name, why in doc.get("peer_failures", {}).items():
        lines.append(f"- **{name} did not start**: {why}")
    return lines


def _versions(versions: dict[str, Any]) -> str:
    """``onnxruntime 1.2, ..., kserve (kserve 0.2, onnxruntime 1.2)``: a peer's venv in
    parentheses."""
    parts = []
    for name, version in versions.items():
        if isinstance(version, dict):
            inner = ", ".join(f"{k} {v}" for k, v in version.items())
            parts.append(f"{name} ({inner})")
        else:
            parts.append(f"{name} {version}")
    return ", ".join(parts)


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values) or "–"


def _peer_text(about: Any) -> str:
    """A peer's line of ``peer_servers.describe()``: what its path includes, its settings."""
    if not isinstance(about, dict):
        return str(about)
    settings = ", ".join(f"{k}={v}" for k, v in about.items() if k != "path")
    return f"{about.get('path', '')} ({settings})" if settings else str(about.get("path", ""))


def _ratio_text(doc: dict[str, Any], referenced: bool) -> str:
    """How the ratios to raw were taken: against raw measured next to each point when the
    points have raw references, else against raw of the same round."""
    if not referenced:
        return (
            "Medians over rounds; the ratios are medians of per-round ratios to raw ONNX Runtime "
            "of the same round (p50 at c=1 / raw p50; req/s at c=16 / raw's best req/s)."
        )
    seconds = doc.get("config", {}).get("ref_duration_s")
    window = f"{seconds:g} s" if seconds else "a few seconds"
    return (
        "Medians over rounds; the ratios are medians of per-round ratios to raw ONNX Runtime "
        "measured right next to the point, because this machine's speed can change from one "
        f"minute to the next: raw runs for {window} just before each c=1 and c=16 point and "
        f"{window} just after it (with the server idle; consecutive points share the window "
        "between them), and the point is divided by the mean of the two, or by the clean one "
        "when other processes disturbed only one (p50 at c=1 / raw "
        "p50; req/s at c=16 / raw's best req/s). Raw's own rows and the cache-hit lines have "
        "no such windows and are divided by raw's rows of the same round. cidserve against the "
        "best peer, and the 1024x768 photo against the 224x224 one: the ratio of their ratios "
        "to raw (the 1024x768 point has windows of its own)."
    )


def _legend(doc: dict[str, Any], contenders: set[str], referenced: bool) -> list[str]:
    lines = [
        _ratio_text(doc, referenced) + " Latency "
        "in ms. `*`: a point of that figure ran while other processes used more than "
        f"{DISTURBED_CORES} cores (*other cores*: the most over the row's points; *load*: the "
        "highest 1-minute load average at the end of a point); read it as disturbed.",
        "",
        f"- `{RAW}`: decode + the project's preprocessing + `session.run` in the harness "
        f"process; `{RAW_SEQUENTIAL}`: one session, 2 intra-op threads, sequential (its req/s "
        f"in the c=16 column); `{RAW_PARALLEL}`: two 1-thread sessions, each driven by its own "
        "thread. Raw's best req/s is the higher of the two.",
    ]
    if CIDSERVE in contenders:
        lines.append(
            "- `cidserve json`: `POST /api/inference/execute`, the JPEG as base64 in JSON; "
            "`jpeg`: the JPEG as the raw body of `POST /api/models/{id}/predict`; `v2`: "
            "`POST /v2/models/{id}/infer`, the JPEG as a BYTES tensor in binary tensor data, "
            "top-5 back through the classification extension (JSON)."
        )
    if CACHE in contenders:
        lines.append(
            f"- `{CACHE}`: a second cidserve with the prediction cache on (in-process store), "
            "the 224x224 JSON body repeated."
        )
    peers = doc.get("peers", {})
    lines += [f"- `{name}`: {_peer_text(peers[name])}" for name in peers if name in contenders]
    return lines
