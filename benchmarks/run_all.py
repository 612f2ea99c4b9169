"""Side-by-side benchmark: raw ONNX Runtime, cidserve, Seldon MLServer, BentoML and Ray Serve.

One command measures every contender on the same ONNX files and the same inputs, one contender
after the other in the same run, and writes ``comparison.json``, ``comparison.md`` and one PNG
per workload (latency and throughput against concurrency) to ``--out`` (``docs/benchmarks``).

Workloads: EfficientNet-Lite0 (ImageNet weights) and ResNet-18 (random weights), exported by
``cidserve export`` in a child process; inputs a 224x224 and a 1024x768 JPEG (real photos from
``registry.samples``) and the float32 tensor the project's preprocessing makes of the 224x224
JPEG (``tensor``), so every contender that takes tensors gets exactly the same numbers.

Paths (what one request includes):

* ``ort`` (JPEG inputs): decode + the project's preprocessing + ``session.run`` in this process,
  with the service's session settings; ``ort`` (tensor): ``session.run`` alone. The limit.
* ``cidserve-jpeg``: ``POST /api/models/{id}/predict`` with the JPEG as raw body; decode,
  preprocess, run and top-5 postprocessing on the server.
* ``cidserve-json``: ``POST /api/inference/execute`` with the JPEG as base64 in JSON.
* ``cidserve-tensor``: ``POST /api/inference/execute`` with ``{"format": "tensor", ...}``
  (base64 float32 bytes); run + top-5 on the server.
* ``cidserve-v2``: ``POST /v2/models/{id}/infer`` with the tensor as V2 binary tensor data;
  the raw output back as binary.
* ``mlserver``, ``bentoml``, ``rayserve``: see ``peer_servers.py``; tensors only.

Load: a closed loop per point: ``c`` worker threads, each with one keep-alive
``http.client`` connection (the cheapest Python client: its CPU per request is reported so you
can see it is not the bottleneck), send a request, read the whole answer, check it, send the
next, for ``--duration`` s after ``--warmup`` s. Prediction caching is off on cidserve.

Run from the repository root::

    .venv/bin/python benchmarks/run_all.py --repeat 2 --duration 3 --warmup 1  # ~17 min
    .venv/bin/python benchmarks/run_all.py            # everything once, 5 s points, ~14 min
    .venv/bin/python benchmarks/run_all.py --quick    # CI smoke run: raw + cidserve, ~1 min

Exits 1 when any request of any contender failed or a contender disagrees on the top-1 class,
2 on bad arguments, 130 when interrupted (partial results go to ``comparison.partial.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import functools
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_inference as bi  # noqa: E402
import peer_servers  # noqa: E402

HOST = bi.HOST
TOP_K = 5
IMAGE_INPUTS = ("224x224", "1024x768")
TENSOR = "tensor"
CIDSERVE_PATHS = {
    "cidserve-jpeg": IMAGE_INPUTS,
    "cidserve-json": IMAGE_INPUTS,
    "cidserve-tensor": (TENSOR,),
    "cidserve-v2": (TENSOR,),
}
CONTENDERS = ("ort", "cidserve", *peer_servers.NAMES)


# --------------------------------------------------------------------------- load generator


Check = Callable[[bytes], tuple[int, dict[str, float] | None]]  # -> (top-1 index, stages)


def http_factory(
    port: int, path: str, body: bytes, headers: dict[str, str], check: Check
) -> Callable[[], bi.Caller]:
    """Callers for ``bi.closed_loop``: one keep-alive ``http.client`` connection per worker."""
    conns: list[http.client.HTTPConnection] = []

    def make() -> bi.Caller:
        box: list[http.client.HTTPConnection | None] = [None]

        def call() -> bi.Sample:
            t0 = time.perf_counter()
            try:
                conn = box[0]
                if conn is None:
                    conn = box[0] = http.client.HTTPConnection(
                        HOST, port, timeout=bi.REQUEST_TIMEOUT_S
                    )
                    conns.append(conn)
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                if box[0] is not None:
                    box[0].close()
                box[0] = None
                return bi.Sample(time.perf_counter() - t0, False, error=type(exc).__name__)
            latency = time.perf_counter() - t0
            if resp.status != 200:
                return bi.Sample(latency, False, error=f"HTTP {resp.status}")
            try:
                _, stages = check(data)
            except Exception as exc:  # a reply we cannot read is an error of the contender
                return bi.Sample(latency, False, error=f"bad reply ({type(exc).__name__})")
            return bi.Sample(latency, True, stages)

        return call

    make.clients = conns  # type: ignore[attr-defined]
    return make


def _check_api(labels: list[str]) -> Check:
    import orjson

    def check(data: bytes) -> tuple[int, dict[str, float] | None]:
        reply = orjson.loads(data)
        if reply.get("success") is not True:
            raise ValueError("success is not true")
        if reply.get("cache") == "hit":
            raise ValueError("prediction cache hit")
        return labels.index(reply["predictions"][0]["class"]), reply.get("metrics")

    return check


PEER_TOKENS: dict[int, str] = {}  # server pid -> BENCH_PEER_TOKEN of everything it started


def tree_cpu_s(root: int) -> float | None:
    """utime + stime of ``root``'s process group, of every descendant of ``root`` and of every
    process carrying the peer's token (``PEER_TOKENS``).

    BentoML (circus) and Ray (raylet and its workers) run workers in sessions of their own,
    so the process group alone would miss them; this replaces ``bench_inference.group_cpu_s``.
    """
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
    if root in PEER_TOKENS:
        seen.update(p for p in peer_servers.pids_with_token(PEER_TOKENS[root]) if p in stats)
    todo = [root]
    while todo:
        pid = todo.pop()
        seen.add(pid)
        todo += [c for c in children.get(pid, []) if c not in seen]
    return sum(stats[pid][2] for pid in seen) / os.sysconf("SC_CLK_TCK")


bi.group_cpu_s = tree_cpu_s


# --------------------------------------------------------------------------- contenders


@dataclasses.dataclass(slots=True)
class Series:
    """One (contender path, model, input) to measure at every concurrency."""

    model: str
    input: str
    path: str
    factory: Callable[[], Callable[[], bi.Caller]]  # builds the caller factory lazily
    server_pid: int | None
    top1: Callable[[], int]


def ort_tensor_caller(raw: bi.RawModel, tensor: np.ndarray) -> Callable[[], bi.Caller]:
    import onnxruntime as ort

    name = raw.session.get_inputs()[0].name
    run, outs = raw.session.run, raw.output_names

    def make() -> bi.Caller:
        feeds = {name: tensor}

        def call() -> bi.Sample:
            t0 = time.perf_counter()
            try:
                run(outs, feeds, ort.RunOptions())
            except Exception as exc:
                return bi.Sample(time.perf_counter() - t0, False, error=type(exc).__name__)
            dt = time.perf_counter() - t0
            return bi.Sample(dt, True, {"inference_time_ms": dt * 1000})

        return call

    return make


def cidserve_request(
    path: str,
    model_id: str,
    jpeg: bytes | None,
    tensor: np.ndarray | None,
    input_name: str,
    output_name: str,
    labels: list[str],
) -> tuple[str, bytes, dict[str, str], Check]:
    import orjson

    if path == "cidserve-jpeg":
        assert jpeg is not None
        return (
            f"/api/models/{model_id}/predict?top_k={TOP_K}",
            jpeg,
            {"content-type": "image/jpeg"},
            _check_api(labels),
        )
    if path == "cidserve-json":
        assert jpeg is not None
        doc = {
            "model_id": model_id,
            "input_data": {"format": "base64_jpeg", "content": base64.b64encode(jpeg).decode()},
            "options": {"top_k": TOP_K},
        }
        return (
            "/api/inference/execute",
            orjson.dumps(doc),
            {"content-type": "application/json"},
            _check_api(labels),
        )
    assert tensor is not None
    if path == "cidserve-tensor":
        doc = {
            "model_id": model_id,
            "input_data": {
                "format": "tensor",
                "content": {
                    "data": base64.b64encode(tensor.astype("<f4").tobytes()).decode(),
                    "dtype": "float32",
                    "shape": list(tensor.shape),
                },
            },
            "options": {"top_k": TOP_K},
        }
        return (
            "/api/inference/execute",
            orjson.dumps(doc),
            {"content-type": "application/json"},
            _check_api(labels),
        )
    raw = tensor.astype("<f4").tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    )
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
    return f"/v2/models/{model_id}/infer", head + raw, headers, _v2_reply_check


def _v2_reply_check(data: bytes) -> tuple[int, dict[str, float] | None]:
    # The JSON header is the longest prefix that parses; the reply's own header length
    # is not visible to a check on the body alone, so find the end of the JSON object.
    depth = 0
    end = 0
    in_str = False
    esc = False
    for i, ch in enumerate(data):
        c = chr(ch)
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                end = i + 1
                break
    head = json.loads(data[:end])
    size = head["outputs"][0]["parameters"]["binary_data_size"]
    values = np.frombuffer(data[end : end + size], dtype="<f4")
    return int(np.argmax(values)), None


# --------------------------------------------------------------------------- run


def measure_series(
    args: argparse.Namespace, series: Series, alive: Callable[[], None]
) -> list[bi.Point]:
    make = series.factory()
    points: list[bi.Point] = []
    try:
        for conc in args.concurrency:
            if args.warmup > 0:
                bi.closed_loop(make, conc, args.warmup)
            if args.wait_quiet > 0:
                bi.wait_for_quiet(args.wait_quiet)
            window = bi.measure_window(make, conc, args.duration, series.server_pid)
            alive()
            point = bi.summarise(bi.Point(series.model, series.input, series.path, conc), [window])
            lat = point.latency_ms
            bi.log(
                f"  {series.model:<18} {series.input:<9} {series.path:<16} c={conc:<2} "
                f"{point.throughput_rps:8.1f} req/s  p50 {bi._f(lat.get('p50'), 2)} "
                f"p99 {bi._f(lat.get('p99'), 2)} ms  errors {point.errors}  "
                f"client {bi._f(point.bench_cpu_cores, 2)} cores  "
                f"other {bi._f(point.other_cpu_cores, 2)}"
            )
            points.append(point)
    finally:
        for conn in getattr(make, "clients", []):
            conn.close()
    return points


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def run(args: argparse.Namespace) -> int:
    from services.runtime.options import SessionConfig
    from services.settings import load_settings

    started = time.perf_counter()
    load_start = loadavg()
    settings = load_settings()
    session_config = SessionConfig(
        **{
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(SessionConfig)
            if hasattr(settings, f.name)
        }
    )
    work = Path(tempfile.mkdtemp(prefix="cidserve-compare-"))
    points: list[bi.Point] = []
    sanity: list[dict[str, Any]] = []
    failures: list[str] = []
    versions: dict[str, Any] = {}
    interrupted: str | None = None
    try:
        exported: list[tuple[bi.ModelSpec, Path]] = []
        for key in args.models:
            path = work / "onnx" / f"{key}.onnx"
            bi.log(f"exporting {key} ...")
            bi.export_model(bi.MODELS[key], path)
            exported.append((bi.MODELS[key], path))
        published = asyncio.run(bi.publish_all(work / "data" / "store", exported))
        jpegs = {k: bi.make_jpeg(bi.INPUTS[k]) for k in args.inputs if k != TENSOR}
        raws = {pub.spec.key: bi.build_raw(pub, session_config) for pub in published}
        tensors: dict[str, np.ndarray] = {}
        for pub in published:
            from preprocessing import ImagePayload

            prepared = raws[pub.spec.key].preprocessor(
                ImagePayload(bi.make_jpeg(bi.INPUTS["224x224"]))
            )
            (arr,) = prepared.feeds.values()
            tensors[pub.spec.key] = np.ascontiguousarray(arr, dtype=np.float32)
        # The top-1 class index raw ORT gives for each (model, input): every path must agree.
        expected: dict[tuple[str, str], int] = {}
        for pub in published:
            raw = raws[pub.spec.key]
            name = raw.session.get_inputs()[0].name
            scores = raw.session.run(raw.output_names, {name: tensors[pub.spec.key]})[0]
            expected[(pub.spec.key, TENSOR)] = int(np.argmax(scores))
            for inp, jpeg in jpegs.items():
                expected[(pub.spec.key, inp)] = pub.labels.index(raw.top1(jpeg))
        bi.log(f"load average at start: {load_start}")

        def record(model: str, inp: str, path: str, top1: int) -> None:
            agree = top1 == expected[(model, inp)]
            sanity.append(
                {
                    "model": model,
                    "input": inp,
                    "path": path,
                    "top1": top1,
                    "expected": expected[(model, inp)],
                    "agree": agree,
                }
            )
            if not agree:
                failures.append(
                    f"{path} on {model}/{inp}: top-1 {top1}, raw ORT says {expected[(model, inp)]}"
                )

        for contender in [c for _ in range(args.repeat) for c in args.contenders]:
            bi.log(f"== {contender}")
            try:
                points += run_contender(
                    args,
                    contender,
                    published,
                    raws,
                    jpegs,
                    tensors,
                    work,
                    settings,
                    versions,
                    record,
                )
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # one broken peer must not lose the others' figures
                msg = f"{contender}: {type(exc).__name__}: {exc}"
                bi.log(f"FAILED {msg}")
                failures.append(msg)
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupted = f"interrupted ({type(exc).__name__}) after {len(points)} points"
        bi.log(interrupted)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    doc: dict[str, Any] = {
        "command": bi.command_line(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": bi.machine_info(),
        "load_average_start": load_start,
        "load_average_end": loadavg(),
        "config": {
            "models": args.models,
            "inputs": args.inputs,
            "contenders": args.contenders,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "wait_quiet_s": args.wait_quiet,
            "repeat": args.repeat,
            "peer_intra_op_threads": args.peer_intra_op_threads,
            "top_k": TOP_K,
            "load_generator": "python http.client, one keep-alive connection per worker thread",
        },
        "server_settings": {
            "intra_op_threads": settings.intra_op_threads,
            "inference_workers": settings.inference_workers,
            "preprocess_workers": settings.preprocess_workers,
            "session_config": dataclasses.asdict(session_config),
            "prediction_cache": "off",
        },
        "versions": versions,
        "peers": peer_servers.describe(),
        "points": [p.to_json() for p in least_disturbed(points)],
        "all_points": [p.to_json() for p in points] if args.repeat > 1 else None,
        "sanity": sanity,
        "failures": failures,
        "wall_s": round(time.perf_counter() - started, 1),
        "complete": interrupted is None,
        "interrupted": interrupted,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "comparison.partial" if interrupted else "comparison"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    points = least_disturbed(points)
    markdown = render(doc, points)
    (out / f"{stem}.md").write_text(markdown)
    if not interrupted:
        plot(points, out)
    print(markdown)
    bi.log(
        f"wrote {out / stem}.json, .md and plots ({doc['wall_s']} s); "
        f"load average {doc['load_average_end']}"
    )
    if interrupted:
        return 130
    errors = sum(p.errors for p in points)
    if failures or errors:
        bi.log(f"FAIL: {errors} failed requests; {'; '.join(failures) or 'no contender failure'}")
        return 1
    return 0


def least_disturbed(points: list[bi.Point]) -> list[bi.Point]:
    """With ``--repeat``: per (model, input, path, concurrency) the measurement during which
    other processes used the fewest cores; order of first appearance kept."""
    best: dict[tuple[str, str, str, int], bi.Point] = {}
    for p in points:
        key = (p.model, p.input, p.path, p.concurrency)
        if key not in best or (p.other_cpu_cores or 0.0) < (best[key].other_cpu_cores or 0.0):
            best[key] = p
    return list(best.values())


def run_contender(
    args: argparse.Namespace,
    contender: str,
    published: list[bi.Published],
    raws: dict[str, bi.RawModel],
    jpegs: dict[str, bytes],
    tensors: dict[str, np.ndarray],
    work: Path,
    settings: Any,
    versions: dict[str, Any],
    record: Callable[[str, str, str, int], None],
) -> list[bi.Point]:
    points: list[bi.Point] = []
    inputs = [i for i in args.inputs]
    if contender == "ort":
        import onnxruntime as ort

        versions["ort"] = {"onnxruntime": ort.__version__, "numpy": np.__version__}
        for pub in published:
            raw = raws[pub.spec.key]
            for inp in inputs:
                if inp == TENSOR:
                    make: Callable[[], bi.Caller] = ort_tensor_caller(raw, tensors[pub.spec.key])
                else:
                    jpeg = jpegs[inp]
                    make = functools.partial(raw.caller, jpeg)
                    label = raw.top1(jpeg)
                    record(pub.spec.key, inp, "ort", pub.labels.index(label))
                points += measure_series(
                    args,
                    Series(pub.spec.key, inp, "ort", lambda m=make: m, None, lambda: 0),
                    lambda: None,
                )
        return points

    if contender == "cidserve":
        import fastapi

        versions["cidserve"] = {"fastapi": fastapi.__version__}
        with bi.gateway(work / "data", work / "server.log") as (base, proc):
            port = int(base.rsplit(":", 1)[1])

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"cidserve died:\n{bi._tail(work / 'server.log')}")

            for pub in published:
                bi.load_over_http(base, pub)
                meta = json.loads(peer_servers.get(f"{base}/v2/models/{pub.model_id}"))
                in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
                for inp in inputs:
                    for path, takes in CIDSERVE_PATHS.items():
                        if inp not in takes:
                            continue
                        req = cidserve_request(
                            path,
                            pub.model_id,
                            jpegs.get(inp),
                            tensors[pub.spec.key] if inp == TENSOR else None,
                            in_name,
                            out_name,
                            pub.labels,
                        )
                        status, body = peer_servers.post(base + req[0], req[1], req[2], 60.0)
                        if status != 200:
                            raise RuntimeError(
                                f"{path} {pub.spec.key}/{inp}: HTTP {status} {body[:300]!r}"
                            )
                        record(pub.spec.key, inp, path, req[3](body)[0])
                        fac = http_factory(port, *req)
                        points += measure_series(
                            args,
                            Series(pub.spec.key, inp, path, lambda f=fac: f, proc.pid, lambda: 0),
                            alive,
                        )
        return points

    # a peer: tensors only
    if TENSOR not in inputs:
        return points
    peer_servers.ensure_venv(contender)
    versions[contender] = peer_servers.peer_versions(contender)
    models = {pub.spec.key: pub.onnx_path for pub in published}
    reqs = {
        pub.spec.key: peer_servers.request_for(
            contender,
            pub.spec.key,
            raws[pub.spec.key].session.get_inputs()[0].name,
            tensors[pub.spec.key],
        )
        for pub in published
    }
    bi.log(f"starting {contender} ...")
    t0 = time.perf_counter()
    server = peer_servers.start(
        contender, models, work, bi.free_port, reqs, args.peer_intra_op_threads
    )
    versions[contender]["start_s"] = round(time.perf_counter() - t0, 1)
    PEER_TOKENS[server.proc.pid] = server.token
    bi.log(f"{contender} up on port {server.port} after {versions[contender]['start_s']} s")
    try:

        def alive() -> None:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{contender} died:\n{peer_servers.tail(server.log_path)}")

        for pub in published:
            req = reqs[pub.spec.key]
            status, body = peer_servers.post(server.base + req.path, req.body, req.headers, 60.0)
            if status != 200:
                raise RuntimeError(f"{contender} {pub.spec.key}: HTTP {status} {body[:300]!r}")
            record(pub.spec.key, TENSOR, contender, req.top1(body))
            fac = http_factory(
                server.port, req.path, req.body, req.headers, lambda d, r=req: (r.top1(d), None)
            )
            points += measure_series(
                args,
                Series(
                    pub.spec.key, TENSOR, contender, lambda f=fac: f, server.proc.pid, lambda: 0
                ),
                alive,
            )
    finally:
        peer_servers.stop(server)
    return points


# --------------------------------------------------------------------------- reporting


def render(doc: dict[str, Any], points: list[bi.Point]) -> str:
    m = doc["machine"]
    cfg = doc["config"]
    lines = [
        "# Side-by-side: raw ONNX Runtime, cidserve and peer servers",
        "",
        *([f"**INCOMPLETE: {doc['interrupted']}.**", ""] if doc["interrupted"] else []),
        *([f"**Failures: {'; '.join(doc['failures'])}**", ""] if doc["failures"] else []),
        f"- command: `{doc['command']}`",
        f"- date (UTC): {doc['date_utc']}; wall time {doc['wall_s']} s",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m['memory_gb']} GB RAM; kernel {m['kernel']}; Python {m['python']}",
        f"- load average (1/5/15 min) at start {doc['load_average_start']}, at end "
        f"{doc['load_average_end']} (shared machine: *other* = cores used by other processes "
        "during the point)",
        f"- versions: {json.dumps(doc['versions'])}",
        f"- per point: {cfg['warmup_s']} s warm-up, {cfg['duration_s']} s measured "
        f"(whole sequence run {cfg.get('repeat', 1)}x, the least disturbed kept); closed loop, "
        f"{cfg['load_generator']}; cidserve prediction cache off; "
        f"cidserve and `ort`: intra_op_threads={doc['server_settings']['intra_op_threads']}, "
        f"inference_workers={doc['server_settings']['inference_workers']}; peers: "
        f"intra_op_threads={cfg.get('peer_intra_op_threads', 0)} (0 = ONNX Runtime's default, "
        "one thread per core), their own default concurrency",
        "",
        "Latency in ms; *client* = CPU of the load generator in cores (for `ort` the work "
        "itself); *server* = CPU of the server (its process group, its descendants and every "
        "process it started) in cores.",
        "",
        "| model | input | path | conc | req | err | req/s | p50 | p95 | p99 "
        "| client | server | other |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        lat = p.latency_ms
        lines.append(
            f"| {p.model} | {p.input} | {p.path} | {p.concurrency} | {p.requests} | {p.errors} "
            f"| {p.throughput_rps:.1f} | {bi._f(lat.get('p50'), 2)} | {bi._f(lat.get('p95'), 2)} "
            f"| {bi._f(lat.get('p99'), 2)} | {bi._f(p.bench_cpu_cores, 2)} "
            f"| {bi._f(p.server_cpu_cores, 2)} | {bi._f(p.other_cpu_cores, 2)} |"
        )
    lines += ["", "## What each path includes", ""]
    lines += [
        "- `ort`: JPEG inputs: decode + preprocess + `session.run` in-process; `tensor`: "
        "`session.run` only.",
        "- `cidserve-jpeg` / `cidserve-json`: raw JPEG body / base64 JPEG in JSON; decode, "
        "preprocess, run, top-5 on the server.",
        "- `cidserve-tensor`: JSON `format: tensor` (base64 float32); run + top-5 on the server.",
        "- `cidserve-v2`: V2 binary tensor in, raw output out (binary).",
    ]
    lines += [f"- `{k}`: {v}" for k, v in doc["peers"].items()]
    lines += ["", "## Summary per workload (best throughput over concurrency; p50 at c=1)", ""]
    lines += [
        "| model | input | path | p50 c=1 | best req/s (at c) | req/s c=16 |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for (model, inp, path), group in _groups(points).items():
        c1 = next((p for p in group if p.concurrency == 1), None)
        c16 = next((p for p in group if p.concurrency == 16), None)
        best = max(group, key=lambda p: p.throughput_rps)
        lines.append(
            f"| {model} | {inp} | {path} | {bi._f(c1.latency_ms.get('p50') if c1 else None, 2)} "
            f"| {best.throughput_rps:.1f} ({best.concurrency}) "
            f"| {bi._f(c16.throughput_rps if c16 else None)} |"
        )
    bad = [s for s in doc["sanity"] if not s["agree"]]
    lines += [
        "",
        "Top-1 check against raw ORT on the same tensor: "
        + (
            "all agree."
            if not bad
            else "; ".join(
                f"{s['path']} {s['model']}/{s['input']}: {s['top1']} vs {s['expected']}"
                for s in bad
            )
        ),
    ]
    return "\n".join(lines) + "\n"


def _groups(points: list[bi.Point]) -> dict[tuple[str, str, str], list[bi.Point]]:
    groups: dict[tuple[str, str, str], list[bi.Point]] = {}
    for p in points:
        groups.setdefault((p.model, p.input, p.path), []).append(p)
    return groups


def plot(points: list[bi.Point], out: Path) -> list[Path]:
    """One PNG per (model, input): p50 (and p99 dashed) latency and throughput vs concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bi.log("matplotlib is not installed (pip install -e '.[dev]'): no plots")
        return []
    written = []
    workloads = sorted({(p.model, p.input) for p in points})
    for model, inp in workloads:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for (m, i, path), group in _groups(points).items():
            if (m, i) != (model, inp):
                continue
            group = sorted(group, key=lambda p: p.concurrency)
            xs = [p.concurrency for p in group]
            (line,) = ax1.plot(
                xs, [p.latency_ms.get("p50", np.nan) for p in group], marker="o", label=path
            )
            ax1.plot(
                xs,
                [p.latency_ms.get("p99", np.nan) for p in group],
                ls="--",
                color=line.get_color(),
                alpha=0.5,
            )
            ax2.plot(
                xs,
                [p.throughput_rps for p in group],
                marker="o",
                label=path,
                color=line.get_color(),
            )
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (closed loop)")
            ax.grid(True, alpha=0.3)
        ax1.set_yscale("log")
        ax1.set_ylabel("latency ms (p50 solid, p99 dashed)")
        ax2.set_ylabel("throughput req/s")
        ax2.legend(fontsize=8)
        fig.suptitle(f"{model}, input {inp}")
        fig.tight_layout()
        path = out / f"comparison-{model}-{inp}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="efficientnet-lite0,resnet18")
    p.add_argument("--inputs", default="224x224,1024x768,tensor")
    p.add_argument(
        "--contenders",
        default=None,
        help=f"comma-separated from {', '.join(CONTENDERS)} "
        "(default: all; ort,cidserve with --quick)",
    )
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per point")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: first model, 224x224 + tensor, c=1,4, 0.5 s points, ort + cidserve",
    )
    p.add_argument("--out", default="docs/benchmarks")
    p.add_argument(
        "--peer-intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads in the peers' sessions (0: ORT's default, what "
        "their idiomatic code gets)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole sequence of contenders this many times and keep, per point, the "
        "measurement least disturbed by other processes (shared machines)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each point, wait up to S s for other processes to go idle (shared machines)",
    )
    args = p.parse_args(argv)

    def split(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in known]
        if bad or not items:
            p.error(f"unknown {what}: {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
        return items

    args.models = split(args.models, list(bi.MODELS), "model")
    args.inputs = split(args.inputs, [*IMAGE_INPUTS, TENSOR], "input")
    try:
        args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    if not args.concurrency or any(not 1 <= c <= 256 for c in args.concurrency):
        p.error("--concurrency values must be between 1 and 256")
    if args.quick:
        args.models = args.models[:1]
        args.inputs = ["224x224", TENSOR]
        args.concurrency = [1, 4]
        args.duration = 0.5
        args.warmup = 0.3
    args.contenders = split(
        args.contenders or ("ort,cidserve" if args.quick else ",".join(CONTENDERS)),
        CONTENDERS,
        "contender",
    )
    if not 0.1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        p.error("--duration must be in [0.1, 600] s and --warmup in [0, 60] s")
    if not 1 <= args.repeat <= 10:
        p.error("--repeat must be in [1, 10]")
    if not 0 <= args.wait_quiet <= 600:
        p.error("--wait-quiet must be in [0, 600] s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    return run(args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
