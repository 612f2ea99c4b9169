"""GPU benchmark: cidserve on CUDA against raw ONNX Runtime on CUDA, in one run, on one photo.

Models: ResNet-18 and EfficientNet-Lite0, exported (``cidserve export``, on CPU, in a child
process) and published as ``run_all.py`` does; input: its 224x224 JPEG. Per round
(``--rounds``, default 3), raw first, then cidserve:

* ``raw``: ONNX Runtime in this process, providers [CUDA, CPU]. ``sequential``: decode + the
  project's preprocessing + ``session.run``, one request after the other (p50 at c=1).
  ``batch 16``: the photo decoded and preprocessed 16 times (16 threads), the feeds
  concatenated, one ``session.run`` of batch 16, repeated (req/s = 16 x runs/s; the model files
  have a dynamic batch dimension).
* ``cidserve``: ``cidserve serve`` as its own process group with
  ``CIDSERVE_EXECUTION_PROVIDER=cuda``, ``CIDSERVE_REQUIRE_GPU=true``, the prediction cache
  off, ``CIDSERVE_BATCH_TRUSTED_CIDS`` set to the two models' metadata CIDs (so cross-request
  batching applies) and a load's warm-up deadline of 60 s (loads are not measured); its other
  settings are its defaults, or the ``CIDSERVE_*`` variables of the environment. Both load
  replies must say ``CUDAExecutionProvider`` and both models must be batched across requests.
  ``POST /api/inference/execute`` (base64 JPEG in JSON), driven by wrk (``wrk_post.lua``): p50
  at c=1, req/s at c=16, and c=64 for errors; one request checks the top-1 class against raw's
  first; ``/metrics`` gives the mean requests per ``session.run``.

Every point: ``--warmup`` seconds (not counted), then ``--duration`` seconds. Ratios to raw are
taken within a round; the report gives medians over rounds. Recorded: the GPU (name, memory,
driver and its CUDA version, from ``nvidia-smi``), the onnxruntime build (package, version,
CUDA and cuDNN it was built with), the machine and the versions. Writes ``gpu.json`` and
``gpu.md`` to ``--out`` (``gpu.partial.*`` when cut short). The defaults take about 6 minutes;
``--time-limit`` (default 480 s) stops the run there and writes what it has.

Setting up a fresh clone on a machine with one NVIDIA GPU (driver installed)::

    make setup                                        # .venv with the CPU onnxruntime
    .venv/bin/pip uninstall -y onnxruntime onnxruntime-gpu
    .venv/bin/pip install onnxruntime-gpu             # docs/GPU.md: same module, with CUDA
    sudo apt-get install -y wrk

Then, from the repository root::

    .venv/bin/python benchmarks/bench_gpu.py
    .venv/bin/python benchmarks/bench_gpu.py --rounds 1 --duration 2 --out /tmp/gpu   # a try

Exit status: 0; 1 when a request failed, a check failed or the time limit cut the run; 2 on bad
arguments or a missing precondition (onnxruntime without ``CUDAExecutionProvider``, no
``nvidia-smi``, no ``wrk``, a CUDA session that falls back to CPU), said in one line; 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_inference as bi  # noqa: E402
import run_all  # noqa: E402
import serving_report as sr  # noqa: E402

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICE_ID = 0
MODELS = ("resnet18", "efficientnet-lite0")
RAW_SEQUENTIAL = "sequential"
BATCH_ROWS = sr.LOAD_C
RAW_BATCH = f"batch {BATCH_ROWS}"
JSON_PATH = "json"
CIDSERVE_CONCURRENCY = (sr.LATENCY_C, sr.LOAD_C, sr.HIGH_C)
INSTALL_GPU = (
    ".venv/bin/pip uninstall -y onnxruntime onnxruntime-gpu"
    " && .venv/bin/pip install onnxruntime-gpu"
)
SMI_TIMEOUT_S = 20
HTTP_GET_TIMEOUT_S = 10
# Seconds outside the measured points: the exports, and one server start with two CUDA loads.
EXPORT_S = 40
SERVER_START_S = 30


def log(msg: str) -> None:
    bi.log(msg)


class CannotMeasure(RuntimeError):
    """cidserve does not run as this benchmark needs (not on CUDA, or without batching): no
    later round can do better, so the run stops."""


class TimeLimit(BaseException):
    """``--time-limit`` passed (raised from SIGALRM; a BaseException, so that no ``except
    Exception`` on the way swallows it)."""


# --------------------------------------------------------------------------- preconditions


def provider_problem(version: str, available: list[str]) -> str | None:
    """Why onnxruntime ``version`` offering ``available`` cannot run the benchmark, or None."""
    if CUDA in available:
        return None
    return (
        f"onnxruntime {version} offers no {CUDA} (it has {', '.join(available)}); "
        f"install the GPU build as docs/GPU.md says: {INSTALL_GPU}"
    )


def smi_problem() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi is not installed: this needs an NVIDIA GPU with its driver"
    try:
        nvidia_smi("-L")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed ({exc}): is the NVIDIA driver loaded?"
    return None


def wrk_problem() -> str | None:
    if shutil.which("wrk") is None:
        return "wrk is not installed: apt-get install wrk (scripts/ci-deps.sh installs it)"
    return None


def cuda_session_problem() -> str | None:
    """Whether a session that asks for CUDA gets it: onnxruntime-gpu offers the provider even
    when the CUDA or cuDNN libraries it needs cannot be loaded, and then runs on CPU."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=cuda_providers())
    except Exception as exc:  # onnxruntime raises its own types
        return f"no session could be created on {CUDA}: {exc}"
    if session.get_providers()[0] != CUDA:
        return (
            f"{CUDA} is offered but a session fell back to {CPU}: the CUDA and cuDNN libraries "
            "this onnxruntime-gpu release needs were not found (its install matrix; docs/GPU.md)"
        )
    return None


def precondition_problem() -> str | None:
    """The first missing precondition, in one line, or None. The provider is checked first."""
    import onnxruntime as ort

    return (
        provider_problem(ort.__version__, ort.get_available_providers())
        or smi_problem()
        or wrk_problem()
        or cuda_session_problem()
    )


# --------------------------------------------------------------------------- GPU and build


def nvidia_smi(*args: str) -> str:
    done = subprocess.run(
        ["nvidia-smi", *args], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=True
    )
    return done.stdout


def parse_gpu_query(text: str) -> list[dict[str, str]]:
    """The lines of ``nvidia-smi --query-gpu=name,driver_version,memory.total
    --format=csv,noheader``."""
    gpus = []
    for line in text.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.rsplit(",", 2))
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def parse_cuda_version(text: str) -> str | None:
    """The CUDA version of the driver, from ``nvidia-smi``'s banner (``CUDA Version: 12.4``)."""
    found = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    return found.group(1) if found else None


def gpu_info() -> dict[str, Any]:
    query = nvidia_smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    return {
        "gpus": parse_gpu_query(query),
        "driver_cuda_version": parse_cuda_version(nvidia_smi()),
        "device_id": DEVICE_ID,
    }


def onnxruntime_build() -> dict[str, Any]:
    """The onnxruntime package that runs here, and the CUDA and cuDNN it was built with."""
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as info

    return {
        "package": getattr(info, "package_name", None),
        "version": ort.__version__,
        "cuda_version": getattr(info, "cuda_version", None),
        "cudnn_version": getattr(info, "cudnn_version", None),
    }


def versions() -> dict[str, Any]:
    out = run_all.versions()
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["onnxruntime-gpu"] = importlib.metadata.version("onnxruntime-gpu")
    return out


# --------------------------------------------------------------------------- raw on CUDA


def cuda_providers() -> list[Any]:
    return [(CUDA, {"device_id": DEVICE_ID}), CPU]


def raw_model(pub: bi.Published) -> bi.RawModel:
    """``pub`` in this process on CUDA: a session with all graph optimisations, the project's
    preprocessor and postprocessor."""
    import onnxruntime as ort

    import postprocessing
    import preprocessing

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(pub.onnx_path), opts, providers=cuda_providers())
    provider = session.get_providers()[0]
    if provider != CUDA:
        raise CannotMeasure(f"raw {pub.spec.key} runs on {provider}, not {CUDA}")
    return bi.RawModel(
        session=session,
        provider=provider,
        output_names=[o.name for o in session.get_outputs()],
        preprocessor=preprocessing.create(pub.metadata, preprocessing.Limits()),
        postprocessor=postprocessing.create(pub.metadata, pub.labels),
    )


def batch_caller(raw: bi.RawModel, jpeg: bytes, rows: int, pool: ThreadPoolExecutor) -> bi.Caller:
    """One call is ``rows`` requests: the JPEG decoded and preprocessed ``rows`` times in
    ``pool``, the feeds concatenated along the batch axis, one ``session.run``."""
    from preprocessing import ImagePayload

    payloads = [ImagePayload(jpeg)] * rows

    def call() -> bi.Sample:
        t0 = time.perf_counter()
        try:
            prepared = list(pool.map(raw.preprocessor, payloads))
            feeds = {
                name: np.concatenate([p.feeds[name] for p in prepared])
                for name in prepared[0].feeds
            }
            raw.session.run(raw.output_names, feeds)
        except Exception as exc:
            return bi.Sample(time.perf_counter() - t0, False, error=type(exc).__name__)
        return bi.Sample(time.perf_counter() - t0, True)

    return call


# --------------------------------------------------------------------------- cidserve


def server_env(published: list[bi.Published]) -> dict[str, str]:
    """What the cidserve of this run is started with, on top of the environment. The warm-up
    deadline of a load is raised (unless set): the first run on CUDA includes cuDNN's search
    for its algorithms, and loads are not what is measured."""
    return {
        "CIDSERVE_EXECUTION_PROVIDER": "cuda",
        "CIDSERVE_CUDA_DEVICE_ID": str(DEVICE_ID),
        "CIDSERVE_REQUIRE_GPU": "true",
        "CIDSERVE_PREDICTION_CACHE": "false",
        "CIDSERVE_BATCH_TRUSTED_CIDS": ",".join(p.metadata_cid for p in published),
        "CIDSERVE_LOG_LEVEL": os.environ.get("CIDSERVE_LOG_LEVEL", "warning"),
        "CIDSERVE_WARMUP_TIMEOUT_MS": os.environ.get("CIDSERVE_WARMUP_TIMEOUT_MS", "60000"),
    }


def server_settings(env: dict[str, str]) -> dict[str, Any]:
    """The execution settings the server reads from this environment plus ``env``."""
    with mock.patch.dict(os.environ, env):
        return run_all.server_settings()


def http_get(url: str) -> bytes:
    """The body of a 200 reply (urllib raises on any other), without a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=HTTP_GET_TIMEOUT_S) as resp:
        return bytes(resp.read())


def batch_totals(exposition: str, model_id: str) -> tuple[float, float]:
    """(requests, runs) of ``model_id`` so far: the sum and count of ``cidserve_batch_size``
    in a ``/metrics`` scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(exposition):
        if family.name != "cidserve_batch_size":
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(family.name)
            if suffix in totals and sample.labels.get("model") == model_id:
                totals[suffix] += sample.value
    return totals["_sum"], totals["_count"]


def scrape(base: str) -> str:
    return http_get(f"{base}/metrics").decode()


def check_loaded(reply: dict[str, Any], key: str) -> None:
    provider = reply.get("execution_provider")
    if provider != CUDA:
        raise CannotMeasure(f"cidserve loaded {key} on {provider}: {reply.get('message')}")


def check_batching(base: str, published: list[bi.Published]) -> None:
    """Both models must be batched across requests (their CIDs are trusted)."""
    listed = json.loads(http_get(f"{base}/api/models"))["models"]
    batched = {m["model_id"] for m in listed if m.get("cross_request_batching")}
    missing = [p.spec.key for p in published if p.model_id not in batched]
    if missing:
        raise CannotMeasure(
            f"cidserve does not batch {', '.join(missing)} across requests "
            "(CIDSERVE_BATCH_ENABLED or CIDSERVE_DETERMINISTIC in the environment?)"
        )


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class BatchStat:
    """Requests per ``session.run`` of one model during one cidserve point and its warm-up."""

    round: int
    model: str
    concurrency: int
    requests: float
    runs: float

    @property
    def rows_per_run(self) -> float | None:
        return self.requests / self.runs if self.runs else None


@dataclass(slots=True)
class GpuRun:
    """What the rounds share on top of ``run_all.Bench`` (the points, checks and failures)."""

    bench: run_all.Bench
    pool: ThreadPoolExecutor
    raw: dict[str, bi.RawModel] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # "raw:<model>": provider
    loads: list[dict[str, Any]] = field(default_factory=list)  # cidserve's load replies
    batches: list[BatchStat] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the server's, on top of os.environ
    gpu: dict[str, Any] = field(default_factory=dict)  # gpu_info()


def prepare(run: GpuRun) -> None:
    """Export and publish the models, make the photo, build the raw CUDA sessions and take
    raw's top-1 class (their first run)."""
    bench = run.bench
    exported = []
    for key in MODELS:
        path = bench.work / "onnx" / f"{key}.onnx"
        log(f"exporting {key} ...")
        bi.export_model(bi.MODELS[key], path)
        exported.append((bi.MODELS[key], path))
    bench.published = asyncio.run(bi.publish_all(bench.work / "data" / "store", exported))
    bench.jpegs = {sr.SMALL: bi.make_jpeg(bi.INPUTS[sr.SMALL])}
    run.env = server_env(bench.published)
    for pub in bench.published:
        raw = raw_model(pub)
        run.raw[pub.spec.key] = raw
        run.providers[f"raw:{pub.spec.key}"] = raw.provider
        top1 = raw.top1(bench.jpegs[sr.SMALL])
        bench.expected[(pub.spec.key, sr.SMALL)] = pub.labels.index(top1)
        log(f"raw {pub.spec.key} on {raw.provider}: top-1 {top1!r}")


def raw_point(
    run: GpuRun, round_: int, key: str, path: str, rows: int, make: Callable[[], bi.Caller]
) -> None:
    """One closed-loop point of one thread; each call serves ``rows`` requests."""
    args = run.bench.args
    if args.warmup:
        bi.closed_loop(make, 1, args.warmup)
    meter = run_all.Meter.start(lambda: None)
    samples, wall = bi.closed_loop(make, 1, args.duration)
    cores, load = meter.stop()
    point = sr.Point(round_, key, sr.RAW, path, sr.SMALL, rows, 0, 0.0, 0.0)
    point.load_average = load
    run_all.samples_point(point, samples, wall, cores)
    point.requests = rows * len(samples)
    point.rps = round(rows * sum(s.ok for s in samples) / wall, 2) if wall > 0 else 0.0
    run.bench.record(point)


def raw_round(run: GpuRun, round_: int) -> None:
    jpeg = run.bench.jpegs[sr.SMALL]
    for key, raw in run.raw.items():
        raw_point(run, round_, key, RAW_SEQUENTIAL, 1, partial(raw.caller, jpeg))
        batch = partial(batch_caller, raw, jpeg, BATCH_ROWS, run.pool)
        raw_point(run, round_, key, RAW_BATCH, BATCH_ROWS, batch)


def cidserve_round(run: GpuRun, round_: int) -> None:
    bench = run.bench
    log_path = bench.work / f"cidserve-{round_}.log"
    with bi.gateway(bench.work / "data", log_path, run.env) as (base, proc):
        server = run_all.Running(proc, log_path)
        for pub in bench.published:
            reply = bi.load_over_http(base, pub)
            run.loads.append(
                {
                    "round": round_,
                    "model": pub.spec.key,
                    "execution_provider": reply.get("execution_provider"),
                    "load_time_ms": reply.get("load_time_ms"),
                }
            )
            check_loaded(reply, pub.spec.key)
        check_batching(base, bench.published)
        for pub in bench.published:
            cidserve_model(run, round_, base, pub, server)


def cidserve_model(
    run: GpuRun, round_: int, base: str, pub: bi.Published, server: run_all.Running
) -> None:
    """The top-1 check, then a wrk point at each concurrency with the batching it got."""
    bench, key = run.bench, pub.spec.key
    session = run.raw[key].session
    names = (session.get_inputs()[0].name, run.raw[key].output_names[0])
    req = run_all.cidserve_request(JSON_PATH, pub.model_id, bench.jpegs[sr.SMALL], *names)
    url = base + req.path
    if bench.check(sr.CIDSERVE, JSON_PATH, key, sr.SMALL, url, req) is None:
        return
    for c in CIDSERVE_CONCURRENCY:
        before = batch_totals(scrape(base), pub.model_id)
        point = sr.Point(round_, key, sr.CIDSERVE, JSON_PATH, sr.SMALL, c, 0, 0.0, 0.0)
        run_all.measure_http(bench, point, url, req, server)
        after = batch_totals(scrape(base), pub.model_id)
        stat = BatchStat(round_, key, c, after[0] - before[0], after[1] - before[1])
        run.batches.append(stat)


def run_rounds(run: GpuRun) -> None:
    for round_ in range(1, run.bench.args.rounds + 1):
        for name, measure in ((sr.RAW, raw_round), (sr.CIDSERVE, cidserve_round)):
            log(f"== round {round_}: {name}")
            try:
                measure(run, round_)
            except CannotMeasure as exc:
                run.bench.failures.append(f"round {round_}, {name}: {exc}")
                log(f"FAILED, stopping: {exc}")
                return
            except Exception as exc:  # a broken round must not lose the other figures
                msg = f"round {round_}, {name}: {type(exc).__name__}: {exc}"
                log(f"FAILED {msg}")
                run.bench.failures.append(msg)


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True, slots=True)
class Summary:
    """One model: medians over rounds, ratios taken within a round."""

    model: str
    raw_p50: sr.Cell  # sequential, c=1
    cidserve_p50: sr.Cell  # c=1
    p50_ratio: sr.Cell
    raw_rps: sr.Cell  # batch 16
    cidserve_rps: sr.Cell  # c=16
    rps_ratio: sr.Cell
    rows_per_run: sr.Cell  # cidserve, requests per session.run at c=16
    errors_high: int | None  # cidserve at c=64, all rounds

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "errors_c64": self.errors_high}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, sr.Cell):
                out[f.name] = {"median": value.value, "disturbed": value.disturbed}
        return out


def summarise(points: list[sr.Point], batches: list[BatchStat], model: str) -> Summary:
    rounds = sr.rounds_of(points)

    def at(round_: int, contender: str, path: str, c: int) -> sr.Point | None:
        return sr.find(points, round_, model, contender, path, c)

    raw_p50 = [sr.latency_sample(at(r, sr.RAW, RAW_SEQUENTIAL, 1)) for r in rounds]
    raw_rps = [sr.rps_sample(at(r, sr.RAW, RAW_BATCH, BATCH_ROWS)) for r in rounds]
    ours_p50 = [sr.latency_sample(at(r, sr.CIDSERVE, JSON_PATH, sr.LATENCY_C)) for r in rounds]
    ours_rps = [sr.rps_sample(at(r, sr.CIDSERVE, JSON_PATH, sr.LOAD_C)) for r in rounds]
    high = [p for r in rounds if (p := at(r, sr.CIDSERVE, JSON_PATH, sr.HIGH_C)) is not None]
    rows = [
        (b.rows_per_run, False) for b in batches if (b.model, b.concurrency) == (model, sr.LOAD_C)
    ]
    return Summary(
        model=model,
        raw_p50=sr.cell(raw_p50),
        cidserve_p50=sr.cell(ours_p50),
        p50_ratio=sr.cell(map(sr.ratio, ours_p50, raw_p50)),
        raw_rps=sr.cell(raw_rps),
        cidserve_rps=sr.cell(ours_rps),
        rps_ratio=sr.cell(map(sr.ratio, ours_rps, raw_rps)),
        rows_per_run=sr.cell(rows),
        errors_high=sum(p.error_count for p in high) if high else None,
    )


SUMMARY_HEAD = [
    f"| model | raw p50 c=1 ms | cidserve p50 c=1 ms | × raw | raw req/s {RAW_BATCH} "
    "| cidserve req/s c=16 | × raw | cidserve requests/run c=16 | cidserve errors c=64 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def summary_line(s: Summary) -> str:
    cells = [
        s.model,
        s.raw_p50.text(2),
        s.cidserve_p50.text(2),
        s.p50_ratio.text(2),
        s.raw_rps.text(1),
        s.cidserve_rps.text(1),
        s.rps_ratio.text(2),
        s.rows_per_run.text(1),
        "–" if s.errors_high is None else str(s.errors_high),
    ]
    return "| " + " | ".join(cells) + " |"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def point_line(p: sr.Point, batches: list[BatchStat]) -> str:
    lat = p.latency_ms
    stat = next(
        (
            b
            for b in batches
            if (b.round, b.model, b.concurrency) == (p.round, p.model, p.concurrency)
        ),
        None,
    )
    rows = stat.rows_per_run if stat and p.contender == sr.CIDSERVE else None
    cores = p.cores
    cells = [
        str(p.round),
        p.model,
        p.contender,
        p.path,
        str(p.concurrency),
        str(p.requests),
        f"{p.rps:.1f}",
        *(f"{lat[k]:.2f}" if k in lat else "–" for k in ("p50", "p90", "p99")),
        ", ".join(f"{k} {n}" for k, n in p.errors.items() if n) or "0",
        "–" if rows is None else f"{rows:.1f}",
        *(_num(cores.get(k)) for k in ("harness", "client", "server", "other")),
    ]
    return "| " + " | ".join(cells) + " |"


# --------------------------------------------------------------------------- report


def document(
    run: GpuRun, summaries: list[Summary], started: float, interrupted: str | None
) -> dict[str, Any]:
    bench, args = run.bench, run.bench.args
    return {
        "command": bi.command_line(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "wall_s": round(time.perf_counter() - started, 1),
        "complete": interrupted is None,
        "interrupted": interrupted,
        "gpu": run.gpu,
        "onnxruntime_build": onnxruntime_build(),
        "machine": bi.machine_info(),
        "versions": bench.versions,
        "server_env": run.env,
        "server_settings": server_settings(run.env),
        "models": {k: bi.MODELS[k].description for k in MODELS},
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "time_limit_s": args.time_limit,
            "input": {"source": bi.INPUTS[sr.SMALL].source, "size": sr.SMALL},
            "batch_rows": BATCH_ROWS,
            "cidserve_concurrency": list(CIDSERVE_CONCURRENCY),
            "wrk": f"{bench.versions.get('wrk', 'wrk')}, {run_all.WRK_SCRIPT.name}",
        },
        "providers": run.providers,
        "cidserve_loads": run.loads,
        "failures": bench.failures,
        "checks": bench.checks,
        "summary": [s.to_json() for s in summaries],
        "batching": [dataclasses.asdict(b) for b in run.batches],
        "points": [p.to_json() for p in bench.points],
    }


def render(
    doc: dict[str, Any],
    summaries: list[Summary],
    points: list[sr.Point],
    batches: list[BatchStat],
) -> str:
    """The markdown report: header, legend, the summary table, every point."""
    lines = [
        "# GPU benchmark: cidserve on CUDA against raw ONNX Runtime on CUDA",
        "",
        *([f"**INCOMPLETE: {doc['interrupted']}.**", ""] if doc.get("interrupted") else []),
        *([f"**Failures: {'; '.join(doc['failures'])}**", ""] if doc.get("failures") else []),
        *header(doc),
        "",
        *LEGEND,
        "",
        "## Summary",
        "",
        *SUMMARY_HEAD,
        *map(summary_line, summaries),
        "",
        "## Every point",
        "",
        "Cores: *harness* = this process (for raw the work itself), *client* = wrk, *server* = "
        "cidserve's process group, *other* = the rest of the machine.",
        "",
        "| round | model | contender | path | c | requests | req/s | p50 | p90 | p99 | errors "
        "| requests/run | harness | client | server | other |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: "
        "| ---: | ---: | ---: | ---: |",
        *(point_line(p, batches) for p in points),
    ]
    return "\n".join(lines) + "\n"


LEGEND = [
    "Medians over rounds; the ratios are medians of per-round ratios (cidserve p50 at c=1 / "
    f"raw {RAW_SEQUENTIAL} p50; cidserve req/s at c=16 / raw {RAW_BATCH} req/s). Latency in "
    f"ms. `*`: a point of that figure ran while other processes used more than "
    f"{sr.DISTURBED_CORES} cores.",
    "",
    f"- raw `{RAW_SEQUENTIAL}`: decode + the project's preprocessing + `session.run` on [CUDA, "
    "CPU], one request after the other, in the harness process.",
    f"- raw `{RAW_BATCH}`: the photo decoded and preprocessed {BATCH_ROWS} times ({BATCH_ROWS} "
    f"threads), one `session.run` of batch {BATCH_ROWS}, repeated; its latency is that of a "
    f"batch, its req/s {BATCH_ROWS} x batches/s.",
    "- cidserve `json`: `POST /api/inference/execute`, the JPEG as base64 in JSON, driven by "
    "wrk; *requests/run*: the mean requests per `session.run` (`cidserve_batch_size`) over the "
    "point and its warm-up.",
]


def header(doc: dict[str, Any]) -> list[str]:
    build, m, cfg = doc["onnxruntime_build"], doc["machine"], doc["config"]
    env = {k: v for k, v in doc["server_env"].items() if k != "CIDSERVE_BATCH_TRUSTED_CIDS"}
    settings = ", ".join(f"{k}={v}" for k, v in doc["server_settings"].items())
    return [
        f"- command: `{doc['command']}`",
        f"- date (UTC): {doc['date_utc']}; wall time {doc['wall_s']} s",
        f"- GPU: {gpu_text(doc['gpu'])}",
        f"- onnxruntime: {build['package']} {build['version']}, built with CUDA "
        f"{build['cuda_version'] or '?'} and cuDNN {build['cudnn_version'] or '?'}",
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} "
        f"usable), {m['memory_gb']} GB RAM, kernel {m['kernel']}, Python {m['python']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}",
        "- cidserve: `cidserve serve` with "
        + ", ".join(f"{k}={v}" for k, v in env.items())
        + " and both models' metadata CIDs in CIDSERVE_BATCH_TRUSTED_CIDS; execution "
        f"settings: {settings}",
        f"- {cfg['rounds']} round(s), raw then cidserve; per point {cfg['warmup_s']} s of "
        f"warm-up (not counted), then {cfg['duration_s']} s measured; wrk {cfg['wrk']} (1 "
        "thread at c=1, 2 above)",
    ]


def gpu_text(gpu: dict[str, Any]) -> str:
    """``NVIDIA H100 (81559 MiB), driver 550.54.15 (CUDA 12.4)``, the GPU used first."""
    gpus = gpu.get("gpus") or []
    if not gpus:
        return "unknown"
    used = gpus[gpu["device_id"]] if gpu["device_id"] < len(gpus) else gpus[0]
    text = f"{used['name']} ({used['memory']}), driver {used['driver']}"
    text += f" (CUDA {gpu['driver_cuda_version']})" if gpu.get("driver_cuda_version") else ""
    return text + (f"; device {gpu['device_id']} of {len(gpus)}" if len(gpus) > 1 else "")


def write_outputs(doc: dict[str, Any], markdown: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu.partial" if doc["interrupted"] else "gpu"  # never clobber a full run
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    return out / stem


# --------------------------------------------------------------------------- main


def estimate_s(rounds: int, duration: int, warmup: int) -> int:
    """Seconds the run should take: the exports, then per round the raw points, one server
    start and the cidserve points (each followed by a short wait for the server to go idle)."""
    point = warmup + duration
    raw = len(MODELS) * 2 * point
    cidserve = SERVER_START_S + len(MODELS) * len(CIDSERVE_CONCURRENCY) * (point + 1)
    return EXPORT_S + rounds * (raw + cidserve)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="measured seconds per point")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each point")
    p.add_argument(
        "--time-limit",
        type=int,
        default=480,
        metavar="S",
        help="stop after S seconds and write what was measured (gpu.partial.*)",
    )
    p.add_argument("--out", default="docs/benchmarks", help="directory for gpu.json/.md")
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        p.error("--rounds must be in [1, 20]")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("--duration must be in [1, 600] s and --warmup in [0, 60] s")
    planned = estimate_s(args.rounds, args.duration, args.warmup)
    if planned > args.time_limit:
        p.error(f"that plan takes about {planned} s, over --time-limit {args.time_limit} s")
    return args


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    planned = estimate_s(args.rounds, args.duration, args.warmup)
    log(f"about {planned} s planned; stopping at {args.time_limit} s at the latest")
    bench = run_all.Bench(args, Path(tempfile.mkdtemp(prefix="cidserve-gpu-")))
    pool = ThreadPoolExecutor(BATCH_ROWS, thread_name_prefix="raw-pre")
    run = GpuRun(bench, pool, gpu=gpu_info())
    interrupted: str | None = None
    code = 0
    try:
        bench.versions = versions()
        prepare(run)
        run_rounds(run)
    except TimeLimit:
        interrupted = f"time limit of {args.time_limit} s reached after {len(bench.points)} points"
        code = 1
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = f"interrupted ({type(exc).__name__}) after {len(bench.points)} points"
        code = 130
    except CannotMeasure as exc:
        bench.failures.append(str(exc))
    finally:
        signal.alarm(0)
        pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(bench.work, ignore_errors=True)
    if interrupted:
        log(interrupted)
    summaries = [summarise(bench.points, run.batches, m) for m in MODELS]
    doc = document(run, summaries, started, interrupted)
    markdown = render(doc, summaries, bench.points, run.batches)
    written = write_outputs(doc, markdown, Path(args.out))
    print(markdown)
    log(f"wrote {written}.json and .md ({time.perf_counter() - started:.0f} s)")
    errors = sum(p.error_count for p in bench.points)
    if code == 0 and (errors or bench.failures):
        log(f"FAIL: {errors} failed requests; {'; '.join(bench.failures) or 'no failed check'}")
        code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = precondition_problem()
    if problem:
        log(problem)
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks: the server group is killed

    def on_alarm(_signum: int, _frame: object) -> None:
        raise TimeLimit

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.time_limit)
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
