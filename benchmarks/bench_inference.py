"""Inference benchmark: cidserve over HTTP against raw in-process ONNX Runtime.

For every model and input it measures, in the same run and on the same bytes:

* ``ort``: raw ONNX Runtime in this process, the physical limit. Each request decodes and
  preprocesses the JPEG with the project's own preprocessor (``preprocessing.create``) and
  calls ``session.run`` on a session built by ``services.runtime.create_session`` with the
  service's ``SessionConfig`` (same provider, graph optimisation and thread settings). At
  concurrency > 1, that many threads call ``session.run`` concurrently (ORT releases the GIL).
* ``http-jpeg``: the gateway over real HTTP, the image as the raw body of
  ``POST /api/models/{id}/predict`` (``Content-Type: image/jpeg``).
* ``http-json``: the gateway over real HTTP, ``POST /api/inference/execute`` with the image
  as base64 in JSON (the body is encoded once, before the clock starts).

The gateway runs as a separate process (``python -m services.cli serve``, its own process
group, killed on exit) on a free port of 127.0.0.1, with a temporary data directory into whose
content store the models are published (``cache_predictions: false``, and the gateway runs
with ``CIDSERVE_PREDICTION_CACHE=false``: every request runs the model); they are loaded with
``POST /api/models/load``. The models are exported by ``cidserve export`` in a child process,
so torch never enters the process that runs the ``ort`` contender.

Each point is a closed loop: ``concurrency`` workers each send a request, wait for the answer
and send the next, for ``--duration`` seconds after ``--warmup`` seconds of discarded traffic.
The measured time is split into ``--rounds`` windows per path that interleave the three paths
(in a rotating order), so that load from other processes on a shared machine falls on all of
them alike; a window during which other processes used more than 0.2 cores is measured again,
at most ``--retries`` times, after waiting (at most ``--wait-quiet`` seconds) for the machine
to go quiet. The load generator is httpx, one keep-alive connection per worker thread.

Reported per point: requests, errors, throughput, p50/p95/p99 latency, this process's CPU per
request (for ``ort`` the work itself, for HTTP the load generator: it shows whether the client
was a bottleneck), the gateway's CPU per request, how busy the machine was, the cores other
processes used (*other*), and the means of the per-stage timings the service reports in
``metrics``. A top-1 check per model and input makes sure all three paths give one answer.

Run from the repository root::

    .venv/bin/python benchmarks/bench_inference.py --quick     # smoke run, well under 60 s
    .venv/bin/python benchmarks/bench_inference.py             # full: ~3 min on a quiet machine
    nice -n -10 .venv/bin/python benchmarks/bench_inference.py --retries 2 --wait-quiet 20
    .venv/bin/python benchmarks/bench_inference.py --models resnet18 --concurrency 1,2,4 \\
        --duration 10 --out /tmp/bench

Options: ``--models efficientnet-lite0,resnet18``, ``--inputs 224x224,1024x768``,
``--concurrency 1,4``, ``--duration 5``, ``--warmup 1``, ``--rounds 5``, ``--retries 0``,
``--wait-quiet 0``, ``--quick`` (1 s per point in one round, the first model, the 224x224
input, 0.3 s warm-up) and ``--out docs/benchmarks``: it writes ``results.json`` and
``results.md`` there (``results.partial.*`` when interrupted) and prints the markdown.
``CIDSERVE_*`` environment variables (e.g. ``CIDSERVE_INTRA_OP_THREADS``,
``CIDSERVE_INFERENCE_WORKERS``) reach the gateway and the in-process session alike, and are
written into the recorded command (secrets redacted). Exit status: 0, or 1 when a request
failed or the paths disagreed on a top-1 class, or 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
TOP_K = 5
REQUEST_TIMEOUT_S = 60.0
SERVER_START_TIMEOUT_S = 90.0
STAGES = ("preprocessing_time_ms", "inference_time_ms", "postprocessing_time_ms", "total_time_ms")
PATHS = ("ort", "http-jpeg", "http-json")
NOISY_CORES = 0.2


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True, slots=True)
class ModelSpec:
    key: str
    preset: str
    description: str


@dataclass(frozen=True, slots=True)
class InputSpec:
    key: str
    source: str  # registry.samples name
    size: tuple[int, int]  # (width, height)


MODELS: dict[str, ModelSpec] = {
    "efficientnet-lite0": ModelSpec(
        "efficientnet-lite0", "efficientnet-lite", "EfficientNet-Lite0, ImageNet weights"
    ),
    "resnet18": ModelSpec("resnet18", "imagenet", "ResNet-18, random weights"),
}
INPUTS: dict[str, InputSpec] = {
    "224x224": InputSpec("224x224", "chelsea", (224, 224)),
    "1024x768": InputSpec("1024x768", "coffee", (1024, 768)),
}


@dataclass(slots=True)
class Published:
    spec: ModelSpec
    onnx_path: Path
    metadata_cid: str
    model_id: str
    metadata: Any  # registry.metadata.ModelMetadata
    labels: list[str]


def export_model(spec: ModelSpec, path: Path) -> None:
    """Export with ``cidserve export`` in a child process: torch never enters this process,
    which runs the in-process contender."""
    cmd = [sys.executable, "-m", "services.cli", "export", spec.key, str(path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"export of {spec.key} failed:\n{done.stdout}{done.stderr}")


async def publish_all(
    store_dir: Path, models: list[tuple[ModelSpec, Path]], cache_predictions: bool = False
) -> list[Published]:
    """Publish each exported model (with the ImageNet labels) into the store at ``store_dir``;
    by default with ``cache_predictions: false``, so that every request runs the model."""
    from registry import export
    from registry.local_store import LocalContentStore
    from registry.publish import publish_model

    labels = export.imagenet_labels()
    store = LocalContentStore(store_dir)
    out: list[Published] = []
    try:
        for spec, path in models:
            result = await publish_model(
                store,
                path,
                name=spec.key,
                description=spec.description,
                labels=labels,
                preset=spec.preset,
                task="classification",
                cache_predictions=cache_predictions,
            )
            out.append(
                Published(spec, path, result.metadata_cid, result.model_id, result.metadata, labels)
            )
    finally:
        await store.aclose()
    return out


def make_jpeg(spec: InputSpec, quality: int = 90) -> bytes:
    """A real photo (scikit-image's, via registry.samples) cropped and resized to the size."""
    from PIL import Image, ImageOps

    from registry import samples

    png = samples.sample_image_bytes(spec.source, "PNG")
    with Image.open(io.BytesIO(png)) as img:
        fitted = ImageOps.fit(img.convert("RGB"), spec.size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fitted.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------- measurement


@dataclass(slots=True)
class Sample:
    latency_s: float
    ok: bool
    stages: dict[str, float] | None = None
    error: str | None = None


Caller = Callable[[], Sample]


@dataclass(slots=True)
class Point:
    model: str
    input: str
    path: str
    concurrency: int
    duration_s: float = 0.0
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    throughput_rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    bench_cpu_ms_per_req: float | None = None
    bench_cpu_cores: float | None = None
    server_cpu_ms_per_req: float | None = None
    server_cpu_cores: float | None = None
    machine_busy_pct: float | None = None
    other_cpu_cores: float | None = None
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float | None:
    """utime + stime of every live process in process group ``pgid`` (all their threads),
    from /proc/<pid>/stat; None when the group has no process left."""
    total = 0
    found = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            found = True
            total += int(fields[11]) + int(fields[12])
    return total / _clock_ticks() if found else None


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    values = [float(v) for v in first[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return total - idle, total


def closed_loop(
    make_caller: Callable[[], Caller], concurrency: int, seconds: float
) -> tuple[list[Sample], float]:
    """Run ``concurrency`` workers, each with its own caller, until ``seconds`` have passed.

    Every worker stops by itself at the deadline (a request in flight then is finished and
    counted). Returns the samples and the wall time from start to the last worker's end.
    """
    callers = [make_caller() for _ in range(concurrency)]
    results: list[list[Sample]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        call, out = callers[i], results[i]
        start.wait()
        end = deadline[0]
        while time.perf_counter() < end:
            out.append(call())

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join(seconds + REQUEST_TIMEOUT_S + 30)
    wall = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a benchmark worker did not stop; giving up")
    return [s for r in results for s in r], wall


@dataclass(slots=True)
class Window:
    """One measured closed-loop window of one path, with the CPU accounting around it."""

    samples: list[Sample]
    wall_s: float
    bench_cpu_s: float
    server_cpu_s: float | None
    machine_busy_s: float | None
    machine_busy_pct: float | None

    @property
    def other_cores(self) -> float | None:
        if self.machine_busy_s is None or self.wall_s <= 0:
            return None
        ours = self.bench_cpu_s + (self.server_cpu_s or 0.0)
        return max(self.machine_busy_s - ours, 0.0) / self.wall_s


def measure_window(
    make_caller: Callable[[], Caller], concurrency: int, seconds: float, server_pid: int | None
) -> Window:
    cpu0 = time.process_time()
    srv0 = group_cpu_s(server_pid) if server_pid else None
    mach0 = machine_cpu()
    samples, wall = closed_loop(make_caller, concurrency, seconds)
    cpu1 = time.process_time()
    srv1 = group_cpu_s(server_pid) if server_pid else None
    mach1 = machine_cpu()
    busy_s = busy_pct = None
    if mach0 and mach1 and mach1[1] > mach0[1]:
        busy_s = (mach1[0] - mach0[0]) / _clock_ticks()
        busy_pct = 100 * (mach1[0] - mach0[0]) / (mach1[1] - mach0[1])
    server_s = srv1 - srv0 if srv0 is not None and srv1 is not None else None
    return Window(samples, wall, cpu1 - cpu0, server_s, busy_s, busy_pct)


def summarise(point: Point, windows: list[Window]) -> Point:
    """Fill ``point`` from its measured windows (all samples pooled)."""
    samples = [s for w in windows for s in w.samples]
    wall = sum(w.wall_s for w in windows)
    ok = [s for s in samples if s.ok]
    point.duration_s = round(wall, 3)
    point.requests = len(samples)
    point.errors = len(samples) - len(ok)
    for s in samples:
        if not s.ok:
            kind = s.error or "error"
            point.error_kinds[kind] = point.error_kinds.get(kind, 0) + 1
    point.throughput_rps = round(len(ok) / wall, 2) if wall > 0 else 0.0
    if ok:
        lat = np.array([s.latency_s * 1000 for s in ok])
        point.latency_ms = {
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "mean": round(float(lat.mean()), 3),
            "min": round(float(lat.min()), 3),
            "max": round(float(lat.max()), 3),
        }
        with_stages = [s.stages for s in ok if s.stages]
        if with_stages:
            keys = sorted({k for st in with_stages for k in st})
            point.stages_ms = {
                k: round(float(np.mean([st[k] for st in with_stages if k in st])), 3) for k in keys
            }
    if wall <= 0:
        return point
    n = max(len(samples), 1)
    bench = sum(w.bench_cpu_s for w in windows)
    point.bench_cpu_ms_per_req = round(bench * 1000 / n, 3)
    point.bench_cpu_cores = round(bench / wall, 3)
    if all(w.server_cpu_s is not None for w in windows):
        server = sum(w.server_cpu_s or 0.0 for w in windows)
        point.server_cpu_ms_per_req = round(server * 1000 / n, 3)
        point.server_cpu_cores = round(server / wall, 3)
    if all(w.machine_busy_pct is not None for w in windows):
        point.machine_busy_pct = round(
            sum((w.machine_busy_pct or 0.0) * w.wall_s for w in windows) / wall, 1
        )
        point.other_cpu_cores = round(
            sum((w.other_cores or 0.0) * w.wall_s for w in windows) / wall, 2
        )
    return point


def background_cores(seconds: float = 1.0) -> float | None:
    """CPU cores used by the whole machine over ``seconds`` (call while this run is idle)."""
    a = machine_cpu()
    time.sleep(seconds)
    b = machine_cpu()
    if a is None or b is None:
        return None
    return round((b[0] - a[0]) / _clock_ticks() / seconds, 2)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15, quiet_s: int = 3) -> float | None:
    """Wait (at most ``max_wait_s``) until the machine used under ``threshold`` cores in each
    of ``quiet_s`` consecutive seconds (this run being idle meanwhile); the last reading."""
    deadline = time.monotonic() + max_wait_s
    quiet = 0
    said = False
    while True:
        used = background_cores()
        if used is None:
            return None
        quiet = quiet + 1 if used < threshold else 0
        if quiet >= quiet_s or time.monotonic() >= deadline:
            return used
        if quiet == 0 and not said:
            log(f"other processes use {used:.2f} cores; waiting for a quiet machine ...")
            said = True


# --------------------------------------------------------------------------- contenders


@dataclass(slots=True)
class RawModel:
    """The in-process contender for one model: session, preprocessor, postprocessor."""

    session: Any
    provider: str
    output_names: list[str]
    preprocessor: Any
    postprocessor: Any

    def caller(self, jpeg: bytes) -> Caller:
        import onnxruntime as ort

        from preprocessing import ImagePayload

        payload = ImagePayload(jpeg)
        pre, run, names = self.preprocessor, self.session.run, self.output_names

        def call() -> Sample:
            t0 = time.perf_counter()
            try:
                prepared = pre(payload)
                t1 = time.perf_counter()
                run(names, prepared.feeds, ort.RunOptions())
            except Exception as exc:
                return Sample(time.perf_counter() - t0, False, error=type(exc).__name__)
            t2 = time.perf_counter()
            stages = {
                "preprocessing_time_ms": (t1 - t0) * 1000,
                "inference_time_ms": (t2 - t1) * 1000,
            }
            return Sample(t2 - t0, True, stages)

        return call

    def top1(self, jpeg: bytes) -> str:
        from postprocessing import Options
        from preprocessing import ImagePayload

        prepared = self.preprocessor(ImagePayload(jpeg))
        values = self.session.run(self.output_names, prepared.feeds)
        outputs = dict(zip(self.output_names, values, strict=True))
        result = self.postprocessor(outputs, prepared.context, Options(top_k=1))
        return str(result.predictions[0]["class"])


def build_raw(pub: Published, session_config: Any) -> RawModel:
    import postprocessing
    import preprocessing
    from services.runtime.session import create_session, warmup_feeds

    session, provider, _ = create_session(pub.onnx_path, session_config)
    names = [o.name for o in session.get_outputs()]
    session.run(names, warmup_feeds(session))
    return RawModel(
        session=session,
        provider=provider,
        output_names=names,
        preprocessor=preprocessing.create(pub.metadata, preprocessing.Limits()),
        postprocessor=postprocessing.create(pub.metadata, pub.labels),
    )


def http_caller_factory(base: str, path: str, model_id: str, jpeg: bytes) -> Callable[[], Caller]:
    """A factory of callers (one httpx client, i.e. one keep-alive connection, per worker)."""
    import base64

    import httpx
    import orjson

    if path == "http-jpeg":
        url = f"{base}/api/models/{model_id}/predict?top_k={TOP_K}"
        body = jpeg
        headers = {"content-type": "image/jpeg"}
    else:
        url = f"{base}/api/inference/execute"
        doc = {
            "model_id": model_id,
            "input_data": {"format": "base64_jpeg", "content": base64.b64encode(jpeg).decode()},
            "options": {"top_k": TOP_K},
        }
        body = orjson.dumps(doc)
        headers = {"content-type": "application/json"}
    clients: list[httpx.Client] = []

    def make() -> Caller:
        client = httpx.Client(
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,
        )
        clients.append(client)

        def call() -> Sample:
            t0 = time.perf_counter()
            try:
                resp = client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                return Sample(time.perf_counter() - t0, False, error=type(exc).__name__)
            latency = time.perf_counter() - t0
            if resp.status_code != 200:
                return Sample(latency, False, error=f"HTTP {resp.status_code}")
            try:
                reply = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                return Sample(latency, False, error="bad JSON")
            if reply.get("success") is not True:
                return Sample(latency, False, error="success=false")
            if reply.get("cache") == "hit":  # an answer from the cache measures no inference
                return Sample(latency, False, error="prediction cache hit")
            return Sample(latency, True, reply.get("metrics"))

        return call

    make.clients = clients  # type: ignore[attr-defined]
    return make


def close_clients(factory: Callable[[], Caller]) -> None:
    for client in getattr(factory, "clients", []):
        client.close()
    getattr(factory, "clients", []).clear()


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def gateway(
    data_dir: Path, log_path: Path, settings: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The gateway as its own process group on a free loopback port; killed on exit.

    ``settings`` (``CIDSERVE_*`` variables) apply on top of the environment; without them the
    log level is warning (unless set) and the prediction cache is off.
    """
    import httpx

    port = free_port()
    env = dict(os.environ)
    if settings is None:
        settings = {
            "CIDSERVE_LOG_LEVEL": env.get("CIDSERVE_LOG_LEVEL", "warning"),
            "CIDSERVE_PREDICTION_CACHE": "false",
        }
    env.update(settings)
    env.update(CIDSERVE_DATA_DIR=str(data_dir), CIDSERVE_PORT=str(port), CIDSERVE_HOST=HOST)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with {proc.returncode}:\n{_tail(log_path)}"
                    )
                try:
                    if client.get(f"{base}/health/live").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{_tail(log_path)}")
                time.sleep(0.2)
        yield base, proc
    finally:
        _kill_group(proc)
        log.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def load_over_http(base: str, pub: Published) -> dict[str, Any]:
    import httpx

    with httpx.Client(timeout=120.0, trust_env=False) as client:
        resp = client.post(
            f"{base}/api/models/load", json={"metadataCid": pub.metadata_cid, "warmup": True}
        )
    if resp.status_code != 200:
        raise RuntimeError(f"loading {pub.spec.key} failed: {resp.status_code} {resp.text}")
    reply: dict[str, Any] = resp.json()
    if reply.get("model_id") != pub.model_id:
        raise RuntimeError(f"loaded {reply.get('model_id')}, expected {pub.model_id}")
    return reply


def http_top1(base: str, path: str, model_id: str, jpeg: bytes) -> str:
    """The top-1 class the gateway answers for ``jpeg`` on ``path`` (a sanity check)."""
    import base64

    import httpx

    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:
        if path == "http-jpeg":
            resp = client.post(
                f"{base}/api/models/{model_id}/predict?top_k=1",
                content=jpeg,
                headers={"content-type": "image/jpeg"},
            )
        else:
            content = base64.b64encode(jpeg).decode()
            resp = client.post(
                f"{base}/api/inference/execute",
                json={
                    "model_id": model_id,
                    "input_data": {"format": "base64_jpeg", "content": content},
                    "options": {"top_k": 1},
                },
            )
    resp.raise_for_status()
    return str(resp.json()["predictions"][0]["class"])


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    cpu_model = "unknown"
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and cpu_model == "unknown":
                cpu_model = value
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
                cores.add((phys, core))
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "numpy": np.__version__,
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }


_SECRET_HINTS = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASS|URL|AUTH|CREDENTIAL", re.IGNORECASE)


def command_line() -> str:
    """The command as run, with the CIDSERVE_* settings in force (secrets redacted)."""
    exe = sys.executable
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    env = [
        f"{k}={'<redacted>' if _SECRET_HINTS.search(k) else v}"
        for k, v in sorted(os.environ.items())
        if k.startswith("CIDSERVE_")
    ]
    return shlex.join([*env, exe, *sys.argv])


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _find(points: list[Point], model: str, inp: str, path: str, conc: int) -> Point | None:
    return next(
        (
            p
            for p in points
            if (p.model, p.input, p.path, p.concurrency) == (model, inp, path, conc)
        ),
        None,
    )


def render_markdown(doc: dict[str, Any], points: list[Point]) -> str:
    m = doc["machine"]
    cfg = doc["config"]
    srv = doc["server_settings"]
    lines = [
        "# cidserve inference benchmark",
        "",
        *([f"**INCOMPLETE: {doc['interrupted']}.**", ""] if doc["interrupted"] else []),
        f"- command: `{doc['command']}`",
        f"- started (UTC): {doc['date_utc']}, took {doc['wall_s']} s",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
        f"({m['physical_cores']} physical cores, {m['usable_cpus']} usable), "
        f"{m['memory_gb']} GB RAM",
        f"- Python {m['python']}, onnxruntime {m['onnxruntime']} "
        f"({', '.join(m['onnxruntime_providers'])}), numpy {m['numpy']}, kernel {m['kernel']}; "
        f"benchmark and gateway ran at nice {m['nice']}",
        f"- per point: {cfg['warmup_s']} s warm-up, then {cfg['duration_s']} s of closed loop "
        f"in {cfg['rounds']} round(s) that interleave the three paths (windows re-measured when "
        f"other processes used > {NOISY_CORES} cores: at most {cfg['retries']} times); "
        f"top_k={TOP_K}; load generator: httpx, one keep-alive connection per worker thread",
        "- service settings: "
        + ", ".join(f"{k}={srv[k]}" for k in EXEC_SETTINGS if k in srv)
        + f"; prediction cache {srv['prediction_cache']}; session provider: "
        f"{', '.join(sorted(set(doc['providers'].values())))}",
        "",
        "Paths: `ort` = decode + preprocess + `session.run` in-process (the physical limit); "
        "`http-jpeg` = `POST /api/models/{id}/predict` with the JPEG as body; `http-json` = "
        "`POST /api/inference/execute` with base64 JSON. Latencies in ms. *bench CPU*: CPU "
        "time of the benchmark process per request (for `ort` the work itself, for HTTP the "
        "load generator) and in cores; *server CPU*: the gateway's CPU (its process group) "
        "per request and in cores; *busy*: whole machine; *other*: cores used by processes "
        "other than these two (background load that disturbs the figures).",
        "",
        "## Latency and throughput",
        "",
        "| model | input | path | conc | requests | errors | req/s | p50 | p95 | p99 "
        "| bench CPU ms/req (cores) | server CPU ms/req (cores) | busy % | other |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for p in points:
        lat = p.latency_ms
        server = (
            "–"
            if p.server_cpu_ms_per_req is None
            else f"{p.server_cpu_ms_per_req:.1f} ({p.server_cpu_cores:.2f})"
        )
        lines.append(
            f"| {p.model} | {p.input} | {p.path} | {p.concurrency} | {p.requests} | {p.errors} "
            f"| {p.throughput_rps:.1f} | {_f(lat.get('p50'))} | {_f(lat.get('p95'))} "
            f"| {_f(lat.get('p99'))} | {_f(p.bench_cpu_ms_per_req, 2)} "
            f"({_f(p.bench_cpu_cores, 2)}) | {server} | {_f(p.machine_busy_pct)} "
            f"| {_f(p.other_cpu_cores, 2)} |"
        )
    lines += [
        "",
        "## Where the time goes (means, ms)",
        "",
        "For HTTP the stages are the service's own `metrics`, averaged over the measured "
        "requests: *queue* = `total_time_ms` − (pre + inference + post), i.e. waiting for and "
        "handing over to the worker pools; *outside* = end-to-end − `total_time_ms`, i.e. "
        "HTTP, routing, body and JSON handling, the event loop and the client. For `ort`, "
        "pre and inference are timed in the loop.",
        "",
        "| model | input | path | conc | end-to-end | pre | inference | post | service total "
        "| queue | outside |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        st = p.stages_ms
        e2e = p.latency_ms.get("mean")
        total = st.get("total_time_ms")
        stages = sum(st.get(k, 0.0) for k in STAGES[:3])
        queue = None if total is None else total - stages
        outside = None if total is None or e2e is None else e2e - total
        lines.append(
            f"| {p.model} | {p.input} | {p.path} | {p.concurrency} | {_f(e2e, 2)} "
            f"| {_f(st.get('preprocessing_time_ms'), 2)} | {_f(st.get('inference_time_ms'), 2)} "
            f"| {_f(st.get('postprocessing_time_ms'), 2)} | {_f(total, 2)} | {_f(queue, 2)} "
            f"| {_f(outside, 2)} |"
        )
    lines += [
        "",
        "## cidserve against raw ONNX Runtime",
        "",
        "Overhead = cidserve − `ort` on the same model, input and concurrency "
        "(p50 and mean latency; throughput as a share of `ort`'s).",
        "",
        "| model | input | conc | path | ort p50 | cidserve p50 | Δp50 ms | Δp50 % "
        "| Δmean ms | ort req/s | cidserve req/s | share |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in doc["overhead"]:
        lines.append(
            f"| {o['model']} | {o['input']} | {o['concurrency']} | {o['path']} "
            f"| {_f(o['ort_p50_ms'], 2)} | {_f(o['p50_ms'], 2)} | {_f(o['delta_p50_ms'], 2)} "
            f"| {_f(o['delta_p50_pct'])} | {_f(o['delta_mean_ms'], 2)} "
            f"| {_f(o['ort_rps'])} | {_f(o['rps'])} | {_f(o['rps_share_pct'])} % |"
        )
    noisy = [p for p in points if (p.other_cpu_cores or 0.0) > NOISY_CORES]
    lines += ["", "## Sanity check (top-1 class of each path)", ""]
    for s in doc["sanity"]:
        mark = "same" if s["agree"] else "DIFFERENT"
        lines.append(
            f"- {s['model']} / {s['input']}: ort {s['ort']!r}, http-jpeg {s['http-jpeg']!r}, "
            f"http-json {s['http-json']!r} ({mark})"
        )
    lines += [
        "",
        f"Background load before measuring: {_f(doc['background_cores_before'], 2)} cores. "
        + (
            f"**{len(noisy)} point(s) ran with other processes using more than {NOISY_CORES} "
            "cores (column *other*): their figures are disturbed.**"
            if noisy
            else f"No point ran with other processes using more than {NOISY_CORES} cores."
        ),
    ]
    return "\n".join(lines) + "\n"


def overhead_rows(points: list[Point]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for base in (p for p in points if p.path == "ort"):
        for path in PATHS[1:]:
            other = _find(points, base.model, base.input, path, base.concurrency)
            if other is None or not other.latency_ms or not base.latency_ms:
                continue
            b50, o50 = base.latency_ms["p50"], other.latency_ms["p50"]
            rows.append(
                {
                    "model": base.model,
                    "input": base.input,
                    "concurrency": base.concurrency,
                    "path": path,
                    "ort_p50_ms": b50,
                    "p50_ms": o50,
                    "delta_p50_ms": round(o50 - b50, 3),
                    "delta_p50_pct": round(100 * (o50 - b50) / b50, 1),
                    "delta_mean_ms": round(other.latency_ms["mean"] - base.latency_ms["mean"], 3),
                    "ort_rps": base.throughput_rps,
                    "rps": other.throughput_rps,
                    "rps_share_pct": round(100 * other.throughput_rps / base.throughput_rps, 1)
                    if base.throughput_rps
                    else None,
                }
            )
    return rows


# --------------------------------------------------------------------------- main


def run_group(
    args: argparse.Namespace,
    pub: Published,
    inp: str,
    concurrency: int,
    raw: RawModel,
    jpeg: bytes,
    base: str,
    proc: subprocess.Popen[bytes],
    server_log: Path,
) -> list[Point]:
    """The three paths at one (model, input, concurrency), interleaved.

    Each path is warmed up, then the measured time is split into ``--rounds`` rounds; every
    round runs each path for ``duration / rounds`` seconds, in a rotating order, so background
    load on a shared machine falls on all three alike. A window during which other processes
    used more than ``NOISY_CORES`` is measured again (``--retries`` times at most; the least
    disturbed one is kept).
    """
    factories: dict[str, Callable[[], Caller]] = {"ort": lambda: raw.caller(jpeg)}
    for path in PATHS[1:]:
        factories[path] = http_caller_factory(base, path, pub.model_id, jpeg)
    pids = {"ort": None, "http-jpeg": proc.pid, "http-json": proc.pid}
    windows: dict[str, list[Window]] = {path: [] for path in PATHS}
    attempts: dict[str, int] = dict.fromkeys(PATHS, 0)
    slice_s = args.duration / args.rounds
    try:
        for path in PATHS:
            if args.warmup > 0:
                closed_loop(factories[path], concurrency, args.warmup)
        for r in range(args.rounds):
            for path in PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]:
                best: Window | None = None
                for attempt in range(1 + args.retries):
                    if attempt:
                        wait_for_quiet(args.wait_quiet)
                    window = measure_window(factories[path], concurrency, slice_s, pids[path])
                    attempts[path] += 1
                    if best is None or (window.other_cores or 0.0) < (best.other_cores or 0.0):
                        best = window
                    if (window.other_cores or 0.0) <= NOISY_CORES:
                        break
                assert best is not None
                windows[path].append(best)
                if proc.poll() is not None:
                    raise RuntimeError(f"the server died:\n{_tail(server_log)}")
    finally:
        for path in PATHS[1:]:
            close_clients(factories[path])
    points = []
    for path in PATHS:
        point = summarise(Point(pub.spec.key, inp, path, concurrency), windows[path])
        point.attempts = attempts[path]
        lat = point.latency_ms
        log(
            f"  {point.model:<18} {inp:<9} {path:<9} c={concurrency:<2} "
            f"{point.throughput_rps:8.1f} req/s  p50 {_f(lat.get('p50'), 2)} "
            f"p99 {_f(lat.get('p99'), 2)} ms  errors {point.errors}  "
            f"other {_f(point.other_cpu_cores, 2)} cores  windows {attempts[path]}"
        )
        points.append(point)
    return points


# SessionConfig fields the app fills from a setting of another name; fields that only change
# how a session is loaded, not how it runs (the optimized-graph cache), are left at None.
_SESSION_SETTING = {"allow_spinning": "intra_op_spinning", "optimized_cache_dir": None}
# Settings that shape how the gateway executes requests, reported with the results.
EXEC_SETTINGS = (
    "execution_provider",
    "intra_op_threads",
    "intra_op_threads_alone",
    "intra_op_spinning",
    "inference_workers",
    "preprocess_workers",
    "batch_enabled",
    "batch_max_size",
    "batch_max_delay_ms",
    "workers",
)


def session_config_from(settings: Any, config_type: Any) -> Any:
    """The service's SessionConfig for these settings, as ``services.wiring`` builds it."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(config_type):
        source = _SESSION_SETTING.get(f.name, f.name)
        if source is not None and hasattr(settings, source):
            kwargs[f.name] = getattr(settings, source)
    return config_type(**kwargs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark cidserve over HTTP against raw in-process ONNX Runtime."
    )
    p.add_argument("--models", default="efficientnet-lite0,resnet18", help=", ".join(MODELS))
    p.add_argument("--inputs", default="224x224,1024x768", help=", ".join(INPUTS))
    p.add_argument("--concurrency", default="1,4", help="comma-separated worker counts")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured point")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per point")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s per point, the first model, the 224x224 input, 0.3 s warm-up",
    )
    p.add_argument("--out", default="docs/benchmarks", help="directory for results.json/.md")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="split each point's duration into this many interleaved rounds (1 with --quick)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help=f"re-measure a point up to this many times while other processes used more "
        f"than {NOISY_CORES} cores during it (the least disturbed attempt is kept)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before measuring, wait up to S seconds for other processes to go idle",
    )
    args = p.parse_args(argv)

    def split(text: str, known: dict[str, Any], what: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in known]
        if bad or not items:
            p.error(f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
        return items

    args.models = split(args.models, MODELS, "model")
    args.inputs = split(args.inputs, INPUTS, "input")
    try:
        args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    if not args.concurrency or any(c < 1 or c > 64 for c in args.concurrency):
        p.error("--concurrency values must be between 1 and 64")
    if args.quick:
        args.models = args.models[:1]
        args.inputs = ["224x224"]
        args.duration = 1.0
        args.warmup = 0.3
        args.rounds = 1
    if not 0.1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("--duration must be in [0.1, 600] s and --warmup in [0, 60] s")
    if not 1 <= args.rounds <= 100:
        p.error("--rounds must be in [1, 100]")
    if not 0 <= args.retries <= 10 or not 0 <= args.wait_quiet <= 3600:
        p.error("--retries must be in [0, 10] and --wait-quiet in [0, 3600] s")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from services.runtime.options import SessionConfig
    from services.settings import load_settings

    started = time.perf_counter()
    started_utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    settings = load_settings()
    session_config = session_config_from(settings, SessionConfig)
    work = Path(tempfile.mkdtemp(prefix="cidserve-bench-"))
    points: list[Point] = []
    background: float | None = None
    interrupted: str | None = None
    sanity: list[dict[str, Any]] = []
    providers: dict[str, str] = {}
    try:
        data_dir = work / "data"
        exported: list[tuple[ModelSpec, Path]] = []
        for key in args.models:
            spec = MODELS[key]
            path = work / "onnx" / f"{key}.onnx"
            log(f"exporting {key} ...")
            export_model(spec, path)
            exported.append((spec, path))
        published = asyncio.run(publish_all(data_dir / "store", exported))
        jpegs = {key: make_jpeg(INPUTS[key]) for key in args.inputs}
        for key, data in jpegs.items():
            log(f"input {key}: {len(data)} bytes of JPEG ({INPUTS[key].source})")

        with gateway(data_dir, work / "server.log") as (base, proc):
            log(f"gateway up at {base} (pid {proc.pid})")
            for pub in published:
                reply = load_over_http(base, pub)
                providers[f"http:{pub.spec.key}"] = reply["execution_provider"]
                log(
                    f"loaded {pub.model_id} over HTTP in {reply['load_time_ms']} ms "
                    f"on {reply['execution_provider']}"
                )
            if args.wait_quiet > 0:
                wait_for_quiet(args.wait_quiet)
            background = background_cores()
            log(f"background load before measuring: {_f(background, 2)} cores")
            for pub in published:
                raw = build_raw(pub, session_config)
                providers[f"ort:{pub.spec.key}"] = raw.provider
                for inp in args.inputs:
                    jpeg = jpegs[inp]
                    check = {
                        "model": pub.spec.key,
                        "input": inp,
                        "ort": raw.top1(jpeg),
                        "http-jpeg": http_top1(base, "http-jpeg", pub.model_id, jpeg),
                        "http-json": http_top1(base, "http-json", pub.model_id, jpeg),
                    }
                    check["agree"] = len({check[k] for k in PATHS}) == 1
                    sanity.append(check)
                    for conc in args.concurrency:
                        points += run_group(
                            args, pub, inp, conc, raw, jpeg, base, proc, work / "server.log"
                        )
                del raw
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = f"interrupted ({type(exc).__name__}) after {len(points)} points"
        log(interrupted)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    doc: dict[str, Any] = {
        "command": command_line(),
        "date_utc": started_utc,
        "machine": machine_info(),
        "config": {
            "models": args.models,
            "inputs": {
                k: {"source": INPUTS[k].source, "size": INPUTS[k].size} for k in args.inputs
            },
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "retries": args.retries,
            "wait_quiet_s": args.wait_quiet,
            "quick": args.quick,
            "top_k": TOP_K,
        },
        "server_settings": {
            **{k: getattr(settings, k) for k in EXEC_SETTINGS if hasattr(settings, k)},
            "session_config": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(session_config).items()
            },
            "prediction_cache": "off (CIDSERVE_PREDICTION_CACHE=false; cache_predictions=false)",
        },
        "providers": providers,
        "background_cores_before": background,
        "points": [p.to_json() for p in points],
        "overhead": overhead_rows(points),
        "sanity": sanity,
        "wall_s": round(time.perf_counter() - started, 1),
        "complete": interrupted is None,
        "interrupted": interrupted,
    }
    markdown = render_markdown(doc, points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "results.partial" if interrupted else "results"  # never clobber a complete run
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    log(f"wrote {out / stem}.json and {out / stem}.md ({doc['wall_s']} s)")
    if interrupted:
        return 130
    errors = sum(p.errors for p in points)
    return 1 if errors or not all(s["agree"] for s in sanity) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks: the server is killed

    signal.signal(signal.SIGTERM, on_term)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
