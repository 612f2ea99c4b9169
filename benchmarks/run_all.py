"""Serving benchmark: cidserve against raw ONNX Runtime and against peer servers, on one photo.

Contenders, one after the other in every round (``--rounds``, default 3):

* ``raw``: ONNX Runtime in this process: decode + the project's preprocessing
  (``preprocessing.create``) + ``session.run``, on sessions built with plain
  ``onnxruntime.SessionOptions`` (all graph optimisations, 1 inter-op thread). Latency: one
  session of 2 intra-op threads, sequential. Throughput: the best of that session sequential and
  two 1-thread sessions, each driven by its own thread.
* ``cidserve``: ``cidserve serve`` with its defaults (embedded store, no chain, no Redis) as its
  own process group on a free 127.0.0.1 port, prediction cache off; three paths: ``json``
  (``POST /api/inference/execute``, base64 JPEG), ``jpeg`` (raw body to
  ``POST /api/models/{id}/predict``) and ``v2`` (``POST /v2/models/{id}/infer``, the JPEG as a
  BYTES tensor in binary tensor data, top-5 through the classification extension). Also: the
  1024x768 JPEG via ``json`` at c=1, and a second cidserve with the prediction cache on,
  answering the same 224x224 JSON body from its cache (c=1 and c=16).
* every peer of ``peer_servers.NAMES``: the same photo, sent the peer's idiomatic way; among
  them ``floor`` (``peer_servers.FLOOR``), raw's own work behind minimal HTTP: a yardstick for
  what HTTP alone costs, reported under the path ``floor`` and never ranked as a peer.

Each server is started, measured and stopped in turn (a model load at start is not measured).
Load: ``wrk`` with ``wrk_post.lua`` (1 thread at c=1, 2 above), a warm-up before each point;
points at c=1 and c=16, and c=64 for cidserve; after every wrk run the harness waits for the
server to finish what wrk left in flight. Before a contender's points one request from
Python checks that its top-1 class is raw's. Every point records the CPU of the harness, wrk,
the server and the rest of the machine, and the load average.

Ratios to raw: the machine's speed can change from one minute to the next, so every c=1 and
c=16 point on the 224x224 JPEG (cidserve's three paths, every peer) gets its own raw figure,
measured right next to it. Raw runs in this process, with the sessions of its own rows, for
``--ref-duration`` seconds (default 2) just before the point (before its warm-up) and again just
after it, once the server is idle; the point is divided by the mean of the two (by the clean
one alone when other processes disturbed only one of them). At c=1 that is
raw's p50 (the 2-thread session, sequential); at c=16 raw's best req/s (that session
sequential or the two 1-thread sessions in parallel, each for half the window). When one point
follows another of the same series, the window between them serves both. The 1024x768 point
(c=1) gets windows too: its cost against the 224x224 photo is the ratio of the two points'
ratios to raw. Points without windows (raw's own rows, c=64, the cache hits) are divided by
raw's rows of the same round, which are kept for the absolute figures. The report gives
medians over rounds of these per-point ratios. Outputs: ``serving.json`` and ``serving.md``
in ``--out`` (``serving.partial.*`` when interrupted).

Run from the repository root::

    .venv/bin/python benchmarks/run_all.py                       # everything, 3 rounds
    .venv/bin/python benchmarks/run_all.py --contenders raw,cidserve --rounds 1 --duration 2
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/bench   # CI smoke run

Exit status: 0; 1 when a request failed or a top-1 class differed from raw's; 2 on bad
arguments or without ``wrk``; 130 when interrupted (partial results written).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_inference as bi  # noqa: E402
import peer_servers  # noqa: E402
import serving_report as sr  # noqa: E402

WRK_SCRIPT = HERE / "wrk_post.lua"
WRK_MARK = "WRK_JSON "
WRK_REQUEST_TIMEOUT_S = 30
CHECK_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
IDLE_WINDOW_S = 0.3
IDLE_CORES = 0.15
TOP_K = 5
CONTENDERS = (sr.RAW, sr.CIDSERVE, *peer_servers.NAMES)
INPUTS = (sr.SMALL, sr.LARGE)


def log(msg: str) -> None:
    bi.log(msg)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def parse_wrk(stdout: str) -> WrkResult:
    """The summary ``wrk_post.lua`` prints in ``done()`` (the last ``WRK_JSON`` line)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(WRK_MARK):
            doc = json.loads(line[len(WRK_MARK) :])
            return WrkResult(
                requests=int(doc["requests"]),
                duration_s=doc["duration_us"] / 1e6,
                errors=_error_kinds(doc["errors"], doc.get("statuses", {})),
                latency_ms={k: float(v) for k, v in doc["latency_ms"].items()},
            )
    raise ValueError(f"wrk printed no {WRK_MARK.strip()} line:\n{stdout[-2000:]}")


def _error_kinds(errors: dict[str, int], statuses: dict[str, int]) -> dict[str, int]:
    """wrk's socket errors, and its ``status`` errors (replies of status 400 and above) split
    by status code, e.g. ``{"connect": 0, ..., "HTTP 503": 4}``."""
    kinds = {k: int(v) for k, v in errors.items() if k != "status"}
    by_code = {f"HTTP {code}": int(n) for code, n in sorted(statuses.items())}
    kinds.update(by_code)
    unexplained = int(errors.get("status", 0)) - sum(by_code.values())
    if unexplained:
        kinds["status"] = unexplained
    return kinds


def wrk_command(
    url: str, headers: dict[str, str], body_file: Path, concurrency: int, seconds: int
) -> list[str]:
    threads = 1 if concurrency == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s"]
    cmd += ["--timeout", f"{WRK_REQUEST_TIMEOUT_S}s", "-s", str(WRK_SCRIPT)]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    return [*cmd, url, "--", str(body_file)]


def run_wrk(cmd: list[str], seconds: int) -> WrkResult:
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=seconds + WRK_REQUEST_TIMEOUT_S + 15,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr[-1000:]}")
    return parse_wrk(done.stdout)


# --------------------------------------------------------------------------- CPU accounting


def tree_cpu_s(root: int, others: Iterable[int] = ()) -> float | None:
    """utime + stime of ``root``'s process group, of every descendant of ``root`` and of the
    processes ``others`` (a peer's daemons outside its group); None once ``root`` is gone."""
    stats: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, pgid, ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12]))
    if root not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    seen = {pid for pid, (_, pgid, _) in stats.items() if pgid == root}
    seen.update(pid for pid in others if pid in stats)
    todo = [root]
    while todo:
        pid = todo.pop()
        seen.add(pid)
        todo += [c for c in children.get(pid, []) if c not in seen]
    return sum(stats[pid][2] for pid in seen) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU of the finished child processes (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


@dataclass(slots=True)
class Meter:
    """The CPU of the harness, wrk, the server and the rest of the machine over one point."""

    server_cpu: Callable[[], float | None]
    wall: float = 0.0
    machine: tuple[float, float] | None = None
    harness: float = 0.0
    client: float = 0.0
    server: float | None = None

    @classmethod
    def start(cls, server_cpu: Callable[[], float | None]) -> Meter:
        """``server_cpu``: the CPU seconds the server has used so far."""
        meter = cls(server_cpu)
        meter.server = server_cpu()
        meter.machine = bi.machine_cpu()
        meter.harness = time.process_time()
        meter.client = children_cpu_s()
        meter.wall = time.perf_counter()
        return meter

    def stop(self) -> tuple[dict[str, float | None], float | None]:
        """(cores by whom, the 1-minute load average)."""
        wall = time.perf_counter() - self.wall
        harness = time.process_time() - self.harness
        client = children_cpu_s() - self.client
        end = self.server_cpu()
        server = end - self.server if end is not None and self.server is not None else None
        machine = bi.machine_cpu()
        other = None
        if self.machine and machine and wall > 0:
            busy = (machine[0] - self.machine[0]) / os.sysconf("SC_CLK_TCK")
            other = max(busy - harness - client - (server or 0.0), 0.0) / wall
        cores = {
            "harness": harness / wall,
            "client": client / wall,
            "server": None if server is None else server / wall,
            "other": other,
        }
        load = load_average()
        return {k: None if v is None else round(v, 3) for k, v in cores.items()}, (
            load[0] if load else None
        )


# --------------------------------------------------------------------------- requests


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One request from Python: (status, headers with lower-case names, body)."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=CHECK_TIMEOUT_S) as resp:
            return int(resp.status), _lower(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), _lower(exc.headers.items()), exc.read()


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers}


def _top1_api(reply: bytes) -> int:
    return int(json.loads(reply)["predictions"][0]["class_id"])


def _top1_v2_classification(reply: bytes) -> int:
    """The classification extension's best element, ``"<value>:<index>:<label>"``."""
    return int(json.loads(reply)["outputs"][0]["data"][0].split(":")[1])


def cidserve_request(
    path: str, model_id: str, jpeg: bytes, input_name: str, output_name: str
) -> peer_servers.Request:
    """The request of one of cidserve's paths (``json``, ``jpeg``, ``v2``) carrying ``jpeg``."""
    if path == "json":
        doc = {
            "model_id": model_id,
            "input_data": {"format": "base64_jpeg", "content": base64.b64encode(jpeg).decode()},
            "options": {"top_k": TOP_K},
        }
        return peer_servers.Request(
            "/api/inference/execute",
            json.dumps(doc).encode(),
            {"Content-Type": "application/json"},
            _top1_api,
        )
    if path == "jpeg":
        return peer_servers.Request(
            f"/api/models/{model_id}/predict?top_k={TOP_K}",
            jpeg,
            {"Content-Type": "image/jpeg"},
            _top1_api,
        )
    element = struct.pack("<I", len(jpeg)) + jpeg
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"classification": TOP_K}}],
        }
    ).encode()
    return peer_servers.Request(
        f"/v2/models/{model_id}/infer",
        head + element,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
        _top1_v2_classification,
    )


# --------------------------------------------------------------------------- raw


@dataclass(slots=True)
class RawSet:
    """One model's in-process sessions: one of 2 intra-op threads, two of 1."""

    sequential: bi.RawModel
    parallel: tuple[bi.RawModel, bi.RawModel]


def plain_session(onnx_path: Path, intra_op_threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def raw_model(pub: bi.Published, intra_op_threads: int) -> bi.RawModel:
    import postprocessing
    import preprocessing

    session = plain_session(pub.onnx_path, intra_op_threads)
    return bi.RawModel(
        session=session,
        provider="CPUExecutionProvider",
        output_names=[o.name for o in session.get_outputs()],
        preprocessor=preprocessing.create(pub.metadata, preprocessing.Limits()),
        postprocessor=postprocessing.create(pub.metadata, pub.labels),
    )


@dataclass(frozen=True, slots=True)
class RawWindow:
    """Raw ONNX Runtime over one short reference window next to a point. ``p50_ms``: the
    2-thread session, sequential; ``rps``: raw's best req/s (that session or the two 1-thread
    sessions in parallel), None when the window served c=1 points only; ``other``: the cores
    the rest of the machine (the idle server included) used during the window."""

    p50_ms: float | None
    rps: float | None
    other: float | None

    def figure(self, concurrency: int) -> float | None:
        """What a point at ``concurrency`` is divided by: the p50 at c=1, else the req/s."""
        return self.p50_ms if concurrency == sr.LATENCY_C else self.rps


def samples_point(
    base: sr.Point, samples: list[bi.Sample], wall: float, cores: dict[str, float | None]
) -> sr.Point:
    ok = np.array([s.latency_s * 1000 for s in samples if s.ok])
    base.requests = len(samples)
    base.duration_s = round(wall, 3)
    base.rps = round(len(ok) / wall, 2) if wall > 0 else 0.0
    base.errors = dict(Counter(s.error or "error" for s in samples if not s.ok))
    if ok.size:
        base.latency_ms = {
            **{f"p{q}": round(float(np.percentile(ok, q)), 3) for q in (50, 90, 99)},
            "mean": round(float(ok.mean()), 3),
            "max": round(float(ok.max()), 3),
        }
    base.cores = cores
    return base


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Bench:
    """Everything one run shares across rounds and contenders."""

    args: argparse.Namespace
    work: Path
    published: list[bi.Published] = field(default_factory=list)
    cached: list[bi.Published] = field(default_factory=list)  # cache_predictions: true
    jpegs: dict[str, bytes] = field(default_factory=dict)
    raw: dict[str, RawSet] = field(default_factory=dict)
    expected: dict[tuple[str, str], int] = field(default_factory=dict)  # raw's top-1 index
    points: list[sr.Point] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    peer_failures: dict[str, str] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)

    def body_file(self, body: bytes) -> Path:
        path = self.work / "bodies" / hashlib.sha256(body).hexdigest()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        return path

    def check(
        self,
        contender: str,
        path: str,
        model: str,
        input_: str,
        url: str,
        req: peer_servers.Request,
    ) -> dict[str, str] | None:
        """One request from Python: its reply must be a 200 with raw's top-1 class. The reply's
        headers, or None (recorded as a failure) when it is not."""
        expected = self.expected[(model, input_)]
        what = f"{contender} {path} {model}/{input_}"
        try:
            status, headers, body = post(url, req.body, req.headers)
            top1 = req.top1(body) if status == 200 else None
        except Exception as exc:  # no answer, or one that is not a classification
            status, headers, top1 = 0, {}, None
            body = f"{type(exc).__name__}: {exc}".encode()
        problem = None
        if status != 200:
            problem = f"HTTP {status} {body[:200]!r}"
        elif top1 != expected:
            problem = f"top-1 {top1}, raw says {expected}"
        self.checks.append(
            {"what": what, "status": status, "top1": top1, "expected": expected, "ok": not problem}
        )
        if problem:
            self.failures.append(f"{what}: {problem}")
            return None
        return headers

    def record(self, point: sr.Point) -> None:
        self.points.append(point)
        lat = point.latency_ms
        log(
            f"  r{point.round} {point.model:<18} {point.contender:<18} {point.path:<10} "
            f"{point.input:<8} c={point.concurrency:<2} {point.rps:8.1f} req/s  "
            f"p50 {_num(lat.get('p50'))} p99 {_num(lat.get('p99'))} ms  "
            f"errors {point.error_count}  other {_num(point.cores.get('other'))} cores"
            + ("  (disturbed)" if point.disturbed else "")
            + (
                f"  raw ref {_num(point.raw_ref_before)} / {_num(point.raw_ref_after)}"
                if point.raw_ref
                else ""
            )
        )


@dataclass(frozen=True, slots=True)
class Running:
    """A started server: its process, its log, and the processes it started outside its
    process group and its tree (a peer's daemons), whose CPU counts as the server's."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    outsiders: Callable[[], list[int]] = list

    def cpu_s(self) -> float | None:
        return tree_cpu_s(self.proc.pid, self.outsiders())

    def wait_idle(self) -> None:
        """Wait until the server has finished the requests wrk left in flight when it stopped
        (servers do not drop work when a client goes away): until it uses under
        ``IDLE_CORES`` over ``IDLE_WINDOW_S``, for at most ``DRAIN_TIMEOUT_S``."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            before = self.cpu_s()
            time.sleep(IDLE_WINDOW_S)
            after = self.cpu_s()
            if before is None or after is None or after - before < IDLE_CORES * IDLE_WINDOW_S:
                return
        log(f"  the server still works {DRAIN_TIMEOUT_S:.0f} s after wrk stopped; going on")


def referenced(bench: Bench, concurrency: int, input_: str) -> bool:
    """Whether a point gets its own raw reference windows: the c=1 and c=16 points on the
    224x224 JPEG, and the 1024x768 one at c=1 (its cost is compared with the 224x224 one's,
    each over raw measured next to it)."""
    if bench.args.ref_duration <= 0:
        return False
    if input_ == sr.LARGE:
        return concurrency == sr.LATENCY_C
    return input_ == sr.SMALL and concurrency in (sr.LATENCY_C, sr.LOAD_C)


def raw_window(bench: Bench, model: str, concurrencies: set[int]) -> RawWindow:
    """Raw ONNX Runtime on the 224x224 JPEG for ``--ref-duration`` seconds, in this process,
    with the sessions of raw's rows (as ``raw_round`` runs them): the 2-thread session
    sequential and, when a point of ``concurrencies`` is at c=16, the two 1-thread sessions in
    parallel, each for half the window. One call per session first, not counted."""
    raw = bench.raw[model]
    jpeg = bench.jpegs[sr.SMALL]
    configs = [(raw.sequential,), *([raw.parallel] if sr.LOAD_C in concurrencies else [])]
    seconds = bench.args.ref_duration / len(configs)
    meter = Meter.start(lambda: None)  # the server's CPU counts as other: it should be idle
    measured: list[sr.Point] = []
    for models in configs:
        callers = [m.caller(jpeg) for m in models]
        for call in callers:
            call()
        make = itertools.cycle(callers).__next__
        samples, wall = bi.closed_loop(make, len(models), seconds)
        scratch = sr.Point(0, model, sr.RAW, "", sr.SMALL, len(models), 0, 0.0, 0.0)
        measured.append(samples_point(scratch, samples, wall, {}))
    cores, _ = meter.stop()
    return RawWindow(
        p50_ms=measured[0].p50,
        rps=max(m.rps for m in measured) if len(measured) > 1 else None,
        other=cores["other"],
    )


def measure_http(
    bench: Bench,
    point: sr.Point,
    url: str,
    req: peer_servers.Request,
    server: Running,
    reference: tuple[RawWindow, set[int]] | None = None,
) -> RawWindow | None:
    """One wrk point (after a warm-up that is not counted) against a running server.

    ``reference``: the raw window taken just before the point, and the concurrencies the
    window to take just after it serves (this point's, and the next point's when that one
    follows at once). Both windows' figures go on the point; returns the window after."""
    body = bench.body_file(req.body)
    args = bench.args
    if args.warmup:
        run_wrk(wrk_command(url, req.headers, body, point.concurrency, args.warmup), args.warmup)
        server.wait_idle()
    meter = Meter.start(server.cpu_s)
    result = run_wrk(
        wrk_command(url, req.headers, body, point.concurrency, args.duration), args.duration
    )
    point.cores, point.load_average = meter.stop()
    server.wait_idle()
    point.requests = result.requests
    point.duration_s = round(result.duration_s, 3)
    point.rps = round(result.rps, 2)
    point.errors = result.errors
    point.latency_ms = result.latency_ms
    after = None
    if reference is not None and server.proc.poll() is None:
        before, serves = reference
        after = raw_window(bench, point.model, serves)
        windows = [before, after]
        clean = [w for w in windows if (w.other or 0.0) <= sr.DISTURBED_CORES]
        if len(clean) == 1:  # a window other processes disturbed is left out
            windows = clean
        point.raw_ref_before = before.figure(point.concurrency) if before in windows else None
        point.raw_ref_after = after.figure(point.concurrency) if after in windows else None
        others = [w.other for w in windows if w.other is not None]
        point.raw_ref_other = max(others, default=None)
    bench.record(point)
    if server.proc.poll() is not None:
        raise RuntimeError(
            f"{point.contender} exited with {server.proc.returncode}:\n"
            + peer_servers.tail(server.log_path)
        )
    return after


def measure_series(
    bench: Bench,
    round_: int,
    names: tuple[str, str, str, str],
    base: str,
    req: peer_servers.Request,
    concurrency: tuple[int, ...],
    server: Running,
) -> None:
    """The top-1 check, then a point at each concurrency, the c=1 and c=16 points on the
    224x224 JPEG between raw reference windows (one window between two such points in a row)."""
    model, contender, path, input_ = names
    if bench.check(contender, path, model, input_, base + req.path, req) is None:
        return
    window: RawWindow | None = None  # the last window, while nothing has run since
    for i, c in enumerate(concurrency):
        point = sr.Point(round_, model, contender, path, input_, c, 0, 0.0, 0.0)
        if not referenced(bench, c, input_):
            measure_http(bench, point, base + req.path, req, server)
            window = None
            continue
        if window is None or window.figure(c) is None:
            server.wait_idle()
            window = raw_window(bench, model, {c})
        serves = {c}
        if i + 1 < len(concurrency) and referenced(bench, concurrency[i + 1], input_):
            serves.add(concurrency[i + 1])
        window = measure_http(bench, point, base + req.path, req, server, (window, serves))


def raw_round(bench: Bench, round_: int) -> None:
    jpeg = bench.jpegs[sr.SMALL]
    for key, raw in bench.raw.items():
        for path, models in (
            (sr.RAW_SEQUENTIAL, (raw.sequential,)),
            (sr.RAW_PARALLEL, raw.parallel),
        ):
            make = itertools.cycle([m.caller(jpeg) for m in models]).__next__
            if bench.args.warmup:
                bi.closed_loop(make, len(models), bench.args.warmup)
            meter = Meter.start(lambda: None)
            samples, wall = bi.closed_loop(make, len(models), bench.args.duration)
            cores, load = meter.stop()
            point = sr.Point(round_, key, sr.RAW, path, sr.SMALL, len(models), 0, 0.0, 0.0)
            point.load_average = load
            bench.record(samples_point(point, samples, wall, cores))


def io_names(raw: RawSet) -> tuple[str, str]:
    session = raw.sequential.session
    return session.get_inputs()[0].name, raw.sequential.output_names[0]


def cidserve_round(bench: Bench, round_: int) -> None:
    settings = {"CIDSERVE_PREDICTION_CACHE": "false"}
    log_path = bench.work / f"cidserve-{round_}.log"
    with bi.gateway(bench.work / "data", log_path, settings) as (base, proc):
        server = Running(proc, log_path)
        for pub in bench.published:
            bi.load_over_http(base, pub)
        for pub in bench.published:
            key = pub.spec.key
            names = io_names(bench.raw[key])
            for path in sr.CIDSERVE_PATHS:
                req = cidserve_request(path, pub.model_id, bench.jpegs[sr.SMALL], *names)
                concurrency = bench.args.cidserve_concurrency
                measure_series(
                    bench,
                    round_,
                    (key, sr.CIDSERVE, path, sr.SMALL),
                    base,
                    req,
                    concurrency,
                    server,
                )
            if sr.LARGE in bench.jpegs:
                req = cidserve_request("json", pub.model_id, bench.jpegs[sr.LARGE], *names)
                measure_series(
                    bench, round_, (key, sr.CIDSERVE, "json", sr.LARGE), base, req, (1,), server
                )


def cache_round(bench: Bench, round_: int) -> None:
    """A cidserve with the prediction cache on: the first reply a miss, then only hits."""
    pub = bench.cached[0]
    key = pub.spec.key
    log_path = bench.work / f"cidserve-cache-{round_}.log"
    with bi.gateway(bench.work / "data-cache", log_path, {}) as (base, proc):
        server = Running(proc, log_path)
        bi.load_over_http(base, pub)
        req = cidserve_request(
            "json", pub.model_id, bench.jpegs[sr.SMALL], *io_names(bench.raw[key])
        )
        url = base + req.path

        def answered_from_cache(want: str) -> bool:
            headers = bench.check(sr.CACHE, "json", key, sr.SMALL, url, req)
            got = None if headers is None else headers.get("x-cache")
            if headers is not None and got != want:
                bench.failures.append(f"{sr.CACHE}: X-Cache {got!r}, expected {want!r}")
            return got == want

        if not (answered_from_cache("miss") and answered_from_cache("hit")):
            return
        for c in (sr.LATENCY_C, sr.LOAD_C):
            point = sr.Point(round_, key, sr.CACHE, "json", sr.SMALL, c, 0, 0.0, 0.0)
            measure_http(bench, point, url, req, server)
        answered_from_cache("hit")


def peer_round(bench: Bench, round_: int, name: str) -> None:
    """Start peer ``name`` with every model, measure it, stop it. A peer that does not start
    is reported and left out of later rounds."""
    jpeg = bench.jpegs[sr.SMALL]
    work = bench.work / f"{name}-{round_}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        models = {
            pub.spec.key: peer_servers.ServedModel.from_metadata(pub.onnx_path, pub.metadata)
            for pub in bench.published
        }
        requests = {key: peer_servers.image_request(name, key, jpeg) for key in models}
        t0 = time.perf_counter()
        server = peer_servers.start(name, models, work, bi.free_port, requests)
    except Exception as exc:
        bench.peer_failures[name] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        log(f"{name} did not start: {bench.peer_failures[name]}")
        return
    log(f"{name} up at {server.base} after {time.perf_counter() - t0:.1f} s")
    running = Running(
        server.proc, server.log_path, lambda: peer_servers.pids_with_token(server.token)
    )
    try:
        if name not in bench.versions:
            bench.versions[name] = peer_servers.peer_versions(name)
        for key, req in requests.items():
            path = sr.FLOOR_PATH if name == peer_servers.FLOOR else sr.PEER_PATH
            names = (key, name, path, sr.SMALL)
            concurrency = (sr.LATENCY_C, sr.LOAD_C)
            measure_series(bench, round_, names, server.base, req, concurrency, running)
    finally:
        peer_servers.stop(server)


def run_round(bench: Bench, round_: int) -> None:
    for contender in bench.args.contenders:
        if contender in bench.peer_failures:
            continue
        log(f"== round {round_}: {contender}")
        try:
            if contender == sr.RAW:
                raw_round(bench, round_)
            elif contender == sr.CIDSERVE:
                cidserve_round(bench, round_)
                if bench.cached:
                    cache_round(bench, round_)
            else:
                peer_round(bench, round_, contender)
        except Exception as exc:  # one broken contender must not lose the others' figures
            msg = f"round {round_}, {contender}: {type(exc).__name__}: {exc}"
            log(f"FAILED {msg}")
            bench.failures.append(msg)


# --------------------------------------------------------------------------- preparation


def prepare(bench: Bench) -> None:
    """Export and publish the models, make the photos, build the raw sessions and take raw's
    top-1 class for every model and input."""
    args = bench.args
    exported = []
    for key in args.models:
        path = bench.work / "onnx" / f"{key}.onnx"
        log(f"exporting {key} ...")
        bi.export_model(bi.MODELS[key], path)
        exported.append((bi.MODELS[key], path))
    bench.published = asyncio.run(bi.publish_all(bench.work / "data" / "store", exported))
    if args.extras and sr.CIDSERVE in args.contenders:
        store = bench.work / "data-cache" / "store"
        bench.cached = asyncio.run(bi.publish_all(store, exported[:1], cache_predictions=True))
    inputs = INPUTS if args.extras else (sr.SMALL,)
    bench.jpegs = {k: bi.make_jpeg(bi.INPUTS[k]) for k in inputs}
    for pub in bench.published:
        raw = RawSet(raw_model(pub, 2), (raw_model(pub, 1), raw_model(pub, 1)))
        bench.raw[pub.spec.key] = raw
        for inp, jpeg in bench.jpegs.items():
            bench.expected[(pub.spec.key, inp)] = pub.labels.index(raw.sequential.top1(jpeg))


def versions() -> dict[str, Any]:
    import onnxruntime as ort

    out: dict[str, Any] = {"onnxruntime": ort.__version__, "numpy": np.__version__}
    for package in ("cidserve", "fastapi", "uvicorn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    out["wrk"] = (done.stdout or done.stderr).split(" [")[0].removeprefix("wrk ").strip()
    return out


def server_settings() -> dict[str, Any]:
    from services.settings import load_settings

    settings = load_settings()
    return {k: getattr(settings, k) for k in bi.EXEC_SETTINGS if hasattr(settings, k)}


# --------------------------------------------------------------------------- report


def document(
    bench: Bench,
    verdicts: list[sr.Verdict],
    started: float,
    load_start: list[float],
    interrupted: str | None,
) -> dict[str, Any]:
    args = bench.args
    return {
        "command": bi.command_line(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "wall_s": round(time.perf_counter() - started, 1),
        "complete": interrupted is None,
        "interrupted": interrupted,
        "machine": bi.machine_info(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "versions": bench.versions,
        "server_settings": server_settings(),
        "models": {k: bi.MODELS[k].description for k in args.models},
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ref_duration_s": args.ref_duration,
            "contenders": args.contenders,
            "cidserve_concurrency": list(args.cidserve_concurrency),
            "extras": args.extras,
            "quick": args.quick,
            "top_k": TOP_K,
            "wrk": f"{bench.versions.get('wrk', 'wrk')}, {WRK_SCRIPT.name}",
            "inputs": {
                k: {"source": bi.INPUTS[k].source, "bytes": len(v)} for k, v in bench.jpegs.items()
            },
        },
        "peers": peer_servers.describe()
        if any(c in peer_servers.NAMES for c in args.contenders)
        else {},
        "peer_failures": bench.peer_failures,
        "failures": bench.failures,
        "checks": bench.checks,
        "raw_baseline": raw_baselines(bench.points, args.models),
        "points": [p.to_json() for p in bench.points],
        "rows": [dataclasses.asdict(r) for r in sr.build_rows(bench.points)],
        "targets": [v.to_json() for v in verdicts],
    }


def raw_baselines(points: list[sr.Point], models: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "round": r,
            "model": m,
            "p50_ms": sr.raw_p50(points, r, m)[0],
            "best_rps": sr.raw_best_rps(points, r, m)[0],
        }
        for r in sr.rounds_of(points)
        for m in models
    ]


def write_outputs(bench: Bench, doc: dict[str, Any], verdicts: list[sr.Verdict]) -> Path:
    out = Path(bench.args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "serving.partial" if doc["interrupted"] else "serving"  # never clobber a full run
    markdown = sr.render(doc, bench.points, verdicts)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return out / stem


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(bi.MODELS), help=", ".join(bi.MODELS))
    p.add_argument(
        "--contenders",
        default=None,
        help=f"comma-separated from {', '.join(CONTENDERS)} (default: all; raw,cidserve with "
        "--quick)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="measured seconds per point")
    p.add_argument("--warmup", type=int, default=1, help="warm-up seconds before each point")
    p.add_argument(
        "--ref-duration",
        type=float,
        default=2.0,
        help="seconds of raw ONNX Runtime just before and just after each c=1 and c=16 point, "
        "the raw figure of that point's ratio (0: ratios to raw's rows of the round)",
    )
    p.add_argument("--out", default="docs/benchmarks", help="directory for serving.json/.md")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: raw and cidserve, the first model, 224x224, json/jpeg/v2 at c=1 "
        "and c=16, one round of 1 s points and 1 s reference windows",
    )
    args = p.parse_args(argv)

    def split(text: str, known: tuple[str, ...], what: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in known]
        if bad or not items:
            p.error(f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
        return [k for k in known if k in items]

    args.models = split(args.models, tuple(bi.MODELS), "model")
    default_contenders = f"{sr.RAW},{sr.CIDSERVE}" if args.quick else ",".join(CONTENDERS)
    args.contenders = split(args.contenders or default_contenders, CONTENDERS, "contender")
    args.extras = not args.quick  # c=64, the 1024x768 JPEG, the prediction cache
    args.cidserve_concurrency = (sr.LATENCY_C, sr.LOAD_C, sr.HIGH_C)
    if args.quick:
        args.models = args.models[:1]
        args.rounds, args.duration, args.warmup, args.ref_duration = 1, 1, 1, 1.0
        args.cidserve_concurrency = (sr.LATENCY_C, sr.LOAD_C)
    if not 1 <= args.rounds <= 20:
        p.error("--rounds must be in [1, 20]")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("--duration must be in [1, 600] s and --warmup in [0, 60] s")
    if not 0 <= args.ref_duration <= 60:
        p.error("--ref-duration must be in [0, 60] s")
    return args


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load_start = load_average()
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="cidserve-serving-")))
    interrupted: str | None = None
    try:
        bench.versions = versions()
        prepare(bench)
        for round_ in range(1, args.rounds + 1):
            run_round(bench, round_)
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = f"interrupted ({type(exc).__name__}) after {len(bench.points)} points"
        log(interrupted)
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
    verdicts = sr.targets(bench.points, args.models)
    doc = document(bench, verdicts, started, load_start, interrupted)
    written = write_outputs(bench, doc, verdicts)
    log(f"wrote {written}.json and .md ({time.perf_counter() - started:.0f} s)")
    if interrupted:
        return 130
    errors = sum(p.error_count for p in bench.points)
    if errors or bench.failures:
        log(f"FAIL: {errors} failed requests; {'; '.join(bench.failures) or 'no failed check'}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk is not installed: apt-get install wrk (scripts/ci-deps.sh installs it)")
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks: every server is stopped

    signal.signal(signal.SIGTERM, on_term)
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
