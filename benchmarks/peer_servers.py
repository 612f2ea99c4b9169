"""The peer serving systems of the side-by-side benchmark: their venvs, requests and servers.

Peers (:data:`NAMES`): KServe, Seldon MLServer, Triton Inference Server through PyTriton,
LitServe, BentoML and Ray Serve, and :data:`FLOOR`, which is not a serving system but a
yardstick: raw ONNX Runtime's own work behind the least HTTP a Python server can add
(``peers/floor/floor_server.py``; it runs in cidserve's environment and is never ranked as a
peer). Each peer is pip-installed into its own virtualenv under
``benchmarks/.venvs/<name>`` (git-ignored; created once from
``benchmarks/peers/<name>/requirements.txt`` and reused while that file and
``benchmarks/peers/constraints.txt`` are unchanged) with the machine's pip. Every venv has the
ONNX Runtime, numpy and Pillow of cidserve's own environment (``constraints.txt``), except
that PyTriton requires numpy < 2 (numpy 1.26.4 there).

Each peer is sent what cidserve is sent: the photo (JPEG bytes), in the peer's own idiomatic
request (:func:`image_request`, see :func:`describe`), and does what cidserve does with it,
with the code in ``benchmarks/peers/``: ``imageprep.py`` decodes and preprocesses the photo
as cidserve's ``image`` preprocessing does for the model (the parameters come from the
published metadata, :meth:`ServedModel.from_metadata`; :func:`check_preprocessing` checks
that the arrays agree), ``classifier.py`` runs the model with ONNX Runtime on the CPU and
keeps the top 5 classes, and ``<name>/`` wires that into the peer's custom-model API. Each
runs as its own process group on a free 127.0.0.1 port; :func:`start` waits until every
probe request answers 200 and :func:`stop` kills it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from peers.imageprep import ImageParams, Preprocessor

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_DIR = HERE / "peers"
VENVS_DIR = HERE / ".venvs"
HOST = "127.0.0.1"
INSTALL_TIMEOUT_S = 1800
PREPROCESSING_TOLERANCE = 1e-5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Settings:
    """How a peer is run on this 2-core machine: ONNX Runtime's intra-op threads per session
    (0: one per core) and ``workers``, the processes / replicas / model instances that
    serve requests side by side (what each peer calls it is in :func:`describe`)."""

    intra_op_threads: int
    workers: int


# Chosen on this 2-core machine: EfficientNet-Lite0 served next to ResNet-18, the 224x224
# photo, wrk for 4 s at c=1 and at c=16, two rounds, windows with other processes busy
# discarded; req/s at c=16 decided, ties by p50 at c=1. Measured (c=1 p50 ms, c=16 req/s):
# - kserve     threads 1, 2 uvicorn workers: 19-21 ms, 104-111   | threads 2, 1 worker: 15 ms, 73
# - mlserver   threads 1, parallel_workers 2: 19-22 ms, 98-100   | threads 2, 1 worker: 17 ms,
#              57-67 | threads 2, inference in the server process (0 workers): 12.5 ms, 68
# - pytriton   threads 2, 1 instance: 18-22 ms, 64-81 | threads 1, 2 instances: 27-29 ms,
#              48-73 | threads 1, 1 instance: 27 ms, 52
# - litserve   threads 1, 2 workers per model: 19 ms, 103 | threads 2, 1 worker: 17 ms, 60-74
# - bentoml    threads 1, 2 workers: 21-22 ms, 85-95 | threads 2, 1 worker: 14-16 ms, 53-66
# - rayserve   threads 1, 2 replicas per model: 33 ms, 46-48 (29-34 without Ray's throughput
#              mode) | threads 2, 1 replica: 29 ms, 30 | threads 1, 1 replica: 33 ms, 13
# Two threads in one process win at c=1 but every peer but Triton (which batches) serves
# more at c=16 with two single-threaded workers, as cidserve does by default.
SETTINGS: dict[str, Settings] = {
    "kserve": Settings(intra_op_threads=1, workers=2),
    "mlserver": Settings(intra_op_threads=1, workers=2),
    "pytriton": Settings(intra_op_threads=2, workers=1),
    "litserve": Settings(intra_op_threads=1, workers=2),
    "bentoml": Settings(intra_op_threads=1, workers=2),
    "rayserve": Settings(intra_op_threads=1, workers=2),
    # Two inference threads a core; a run alone takes a session of one thread a core.
    "floor": Settings(intra_op_threads=1, workers=4),
}
NAMES: tuple[str, ...] = tuple(SETTINGS)
FLOOR = "floor"
"""Raw's work behind minimal HTTP: measured like a peer, reported apart, never ranked."""
PACKAGES = {
    "kserve": "kserve",
    "mlserver": "mlserver",
    "pytriton": "nvidia-pytriton",
    "litserve": "litserve",
    "bentoml": "bentoml",
    "rayserve": "ray",
    "floor": "httptools",
}
START_TIMEOUT_S = {"rayserve": 300.0}
DEFAULT_START_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------- venvs


def venv_python(name: str) -> Path:
    if name == FLOOR:  # cidserve's own environment: raw's preprocessing, no install
        return Path(sys.executable)
    return VENVS_DIR / name / "bin" / "python"


def _requirements_digest(reqs: Path) -> str:
    digest = hashlib.sha256(reqs.read_bytes())
    digest.update((PEERS_DIR / "constraints.txt").read_bytes())
    return digest.hexdigest()


def ensure_venv(name: str) -> Path:
    """The peer's venv, created and installed from its requirements file when missing or stale.

    A stamp file holds the hash of the requirements (and constraints) it was built from;
    torch is never asked for, and an install that pulled it in anyway is refused.
    """
    if name == FLOOR:
        return venv_python(name)
    reqs = PEERS_DIR / name / "requirements.txt"
    digest = _requirements_digest(reqs)
    venv = VENVS_DIR / name
    stamp = venv / ".bench-requirements.sha256"
    py = venv_python(name)
    if py.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return py
    log(f"installing {name} into {venv} (once; reused afterwards) ...")
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-r", str(reqs)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"pip install for {name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    probe = subprocess.run(
        [str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if probe.stdout.strip() == "True":
        raise RuntimeError(f"the {name} venv pulled in torch; its requirements must not")
    stamp.write_text(digest + "\n")
    return py


def peer_versions(name: str) -> dict[str, str]:
    """Versions of the peer's own package and of onnxruntime, numpy and Pillow in its venv."""
    packages = (PACKAGES[name], "onnxruntime", "numpy", "pillow")
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{p: m.version(p) for p in {packages!r}}}))"
    )
    done = subprocess.run(
        [str(venv_python(name)), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {}


# --------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One model a peer serves: its ONNX file and how a photo becomes its input
    (``metadata``: the published ``metadata.json``, which the floor preprocesses with)."""

    onnx: Path
    image: ImageParams
    metadata: str = ""

    @classmethod
    def from_metadata(cls, onnx_path: Path, metadata: Any) -> ServedModel:
        """From cidserve's ``ModelMetadata`` of the published model (cidserve's venv)."""
        return cls(Path(onnx_path), image_params(metadata), metadata.model_dump_json())

    def to_json(self) -> dict[str, Any]:
        return {"onnx": str(self.onnx), "image": self.image.to_json(), "metadata": self.metadata}


def image_params(metadata: Any) -> ImageParams:
    """What cidserve's ``image`` preprocessing does for the model of ``metadata``, as the
    peers' :class:`ImageParams` (normalisation as a per-channel scale and offset on 0..255
    pixels, computed as cidserve computes it). Only the ``shorter_side`` resize is offered."""
    from preprocessing import parse_options
    from preprocessing.feeds import model_input
    from preprocessing.image_options import ImagePreprocessing, MeanStd

    options = parse_options(metadata.preprocessing)
    if not isinstance(options, ImagePreprocessing) or options.resize_mode != "shorter_side":
        raise ValueError(
            f"the peers take image models with the shorter_side resize; {metadata.name!r} "
            f"has preprocessing {metadata.preprocessing.kind!r}"
        )
    norm = options.normalize
    if isinstance(norm, MeanStd):
        std = np.asarray(norm.std, np.float64)
        scale, offset = 1.0 / (255.0 * std), -np.asarray(norm.mean, np.float64) / std
    elif norm is not None:
        scale, offset = np.full(3, norm.scale), np.full(3, norm.offset)
    else:
        scale, offset = np.ones(3), np.zeros(3)
    target = model_input(metadata)
    return ImageParams(
        input=target.name,
        size=(options.size[0], options.size[1]),
        crop_ratio=options.crop_ratio,
        interpolation=options.interpolation,
        scale=(float(scale[0]), float(scale[1]), float(scale[2])),
        offset=(float(offset[0]), float(offset[1]), float(offset[2])),
        channel_order=options.channel_order,
        layout=options.layout,
        dtype=target.dtype,
    )


def check_preprocessing(metadata: Any, jpeg: bytes) -> float:
    """The largest absolute difference between the peers' preprocessing of ``jpeg`` and
    cidserve's (``preprocessing.create(metadata, Limits())``); ``ValueError`` when the
    arrays differ in shape or dtype, or by more than :data:`PREPROCESSING_TOLERANCE`."""
    from preprocessing import ImagePayload, Limits, create

    params = image_params(metadata)
    want = create(metadata, Limits())(ImagePayload(jpeg)).feeds[params.input]
    got = Preprocessor(params)(jpeg)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise ValueError(
            f"peer preprocessing gives {got.dtype}{list(got.shape)}; "
            f"cidserve's {want.dtype}{list(want.shape)}"
        )
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if diff > PREPROCESSING_TOLERANCE:
        raise ValueError(
            f"peer preprocessing differs from cidserve's by {diff:.3g} "
            f"(tolerance {PREPROCESSING_TOLERANCE})"
        )
    return diff


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Request:
    """One ready-made request: path, body (encoded once) and headers, plus a reply check that
    returns the top-1 class index of the reply (or raises)."""

    path: str
    body: bytes
    headers: dict[str, str]
    top1: Callable[[bytes], int]


JSON_HEADERS = {"content-type": "application/json"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _top1_v2(reply: bytes) -> int:
    """Top 1 of a V2 (Open Inference Protocol) JSON reply with an ``indices`` output."""
    outputs = {o["name"]: o for o in json.loads(reply)["outputs"]}
    return int(outputs["indices"]["data"][0])


def _top1_indices(reply: bytes) -> int:
    return int(json.loads(reply)["indices"][0])


def _kserve_request(model: str, jpeg: bytes) -> Request:
    body = json.dumps({"instances": [{"image": {"b64": _b64(jpeg)}}]}).encode()

    def top1(reply: bytes) -> int:
        return int(json.loads(reply)["predictions"][0]["indices"][0])

    return Request(f"/v1/models/{model}:predict", body, JSON_HEADERS, top1)


def _mlserver_request(model: str, jpeg: bytes) -> Request:
    image = {
        "name": "image",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"content_type": "base64"},
        "data": [_b64(jpeg)],
    }
    body = json.dumps({"inputs": [image]}).encode()
    return Request(f"/v2/models/{model}/infer", body, JSON_HEADERS, _top1_v2)


def _pytriton_request(model: str, jpeg: bytes) -> Request:
    """The V2 binary tensor data extension: a JSON header, then the BYTES tensor's raw data
    (each element as a 4-byte little-endian length and its bytes)."""
    raw = struct.pack("<I", len(jpeg)) + jpeg
    image = {
        "name": "image",
        "shape": [1, 1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [image]}).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return Request(f"/v2/models/{model}/infer", header + raw, headers, _top1_v2)


def _litserve_request(model: str, jpeg: bytes) -> Request:
    body = json.dumps({"image_data": _b64(jpeg)}).encode()
    return Request(f"/{model}/predict", body, JSON_HEADERS, _top1_indices)


def _bentoml_request(model: str, jpeg: bytes) -> Request:
    """multipart/form-data: the ``model`` field and the photo as the ``image`` file."""
    boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        'filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n',
    ]
    body = "".join(parts).encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return Request("/classify", body, headers, _top1_indices)


def _floor_request(model: str, jpeg: bytes) -> Request:
    """cidserve's own JSON body (``POST /api/inference/execute``, the photo in base64)."""
    doc = {
        "model_id": model,
        "input_data": {"format": "base64_jpeg", "content": _b64(jpeg)},
        "options": {"top_k": 5},
    }
    return Request("/api/inference/execute", json.dumps(doc).encode(), JSON_HEADERS, _top1_indices)


def _rayserve_request(model: str, jpeg: bytes) -> Request:
    return Request(f"/{model}", jpeg, {"content-type": "image/jpeg"}, _top1_indices)


_REQUESTS: dict[str, Callable[[str, bytes], Request]] = {
    "kserve": _kserve_request,
    "mlserver": _mlserver_request,
    "pytriton": _pytriton_request,
    "litserve": _litserve_request,
    "bentoml": _bentoml_request,
    "rayserve": _rayserve_request,
    "floor": _floor_request,
}


def image_request(name: str, model: str, jpeg: bytes) -> Request:
    """Peer ``name``'s idiomatic request carrying the photo ``jpeg`` to ``model``."""
    return _REQUESTS[name](model, jpeg)


# --------------------------------------------------------------------------- servers


@dataclass(slots=True)
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    venv: Path
    token: str  # BENCH_PEER_TOKEN: inherited by every process the peer starts

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


def _mlserver_repository(
    work: Path, models: dict[str, ServedModel], port: int, free_port: Callable[[], int]
) -> Path:
    """MLServer's model repository: ``settings.json`` and a ``model-settings.json`` a model."""
    root = work / "mlserver-models"
    root.mkdir(parents=True, exist_ok=True)
    server = {
        "host": HOST,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": SETTINGS["mlserver"].workers,
        "debug": False,
    }
    (root / "settings.json").write_text(json.dumps(server))
    for name, model in models.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        settings = {
            "name": name,
            "implementation": "photo_model.PhotoClassifier",
            "parameters": {"uri": str(model.onnx), "extra": {"image": model.image.to_json()}},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
    return root


def _command(
    name: str,
    py: Path,
    port: int,
    work: Path,
    models: dict[str, ServedModel],
    free_port: Callable[[], int],
) -> list[str]:
    """The command line that starts peer ``name`` on ``port``."""
    bin_dir, code = py.parent, PEERS_DIR / name
    if name == "kserve":
        return [
            *(str(py), str(code / "photo_server.py"), "--http_port", str(port)),
            *("--workers", str(SETTINGS[name].workers), "--enable_grpc", "false"),
        ]
    if name == "mlserver":
        repository = _mlserver_repository(work, models, port, free_port)
        return [str(bin_dir / "mlserver"), "start", str(repository)]
    if name == "bentoml":
        return [
            str(bin_dir / "bentoml"),
            "serve",
            "service:PhotoClassifier",
            "--host",
            HOST,
            "--port",
            str(port),
        ]
    scripts = {
        "floor": "floor_server.py",
        "pytriton": "triton_server.py",
        "litserve": "photo_server.py",
        "rayserve": "serve_app.py",
    }
    return [str(py), str(code / scripts[name])]


def _environment(name: str, py: Path, port: int, models_file: Path, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIDSERVE_", "VIRTUAL_ENV"))}
    settings = SETTINGS[name]
    env.update(
        BENCH_MODELS=str(models_file),
        BENCH_PORT=str(port),
        BENCH_INTRA_OP_THREADS=str(settings.intra_op_threads),
        BENCH_WORKERS=str(settings.workers),
        PYTHONPATH=f"{PEERS_DIR / name}:{PEERS_DIR}" + (f":{ROOT}" if name == FLOOR else ""),
        PATH=f"{py.parent}:{env.get('PATH', '')}",
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(models_file.parent / "bentoml-home"),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray starts its workers (Serve's proxy and replicas) at niceness 15; 0 puts them on a
        # par with every other peer's processes and with the load generator.
        RAY_worker_niceness="0",
        # Ray Serve's documented high-throughput mode (direct ingress to the replicas, gRPC
        # between Serve's actors, buffered request logs).
        RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
        NO_PROXY="*",
        BENCH_PEER_TOKEN=token,
    )
    if name == "pytriton":
        # Triton's Python backend stub loads libpython3.X.so dynamically: the interpreter's
        # own must come first, or the system's (another patch release) runs this Python's
        # standard library and fails (Debian's 3.11.2 under pyenv's 3.11.7 here).
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    return env


def start(
    name: str,
    models: dict[str, ServedModel],
    work: Path,
    free_port: Callable[[], int],
    probes: dict[str, Request],
) -> Server:
    """Start peer ``name`` serving ``models`` and wait until every probe request answers 200."""
    py = ensure_venv(name)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = f"{name}-{os.getpid()}-{secrets.token_hex(8)}"
    models_file = work / f"{name}-models.json"
    models_file.write_text(json.dumps({k: m.to_json() for k, m in models.items()}))
    log_path = work / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            _command(name, py, port, work, models, free_port),
            cwd=PEERS_DIR / name,
            env=_environment(name, py, port, models_file, token),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, port, log_path, py.parent.parent, token)
    try:
        _wait_ready(server, probes, START_TIMEOUT_S.get(name, DEFAULT_START_TIMEOUT_S))
    except BaseException:
        stop(server)
        raise
    return server


def _wait_ready(server: Server, probes: dict[str, Request], timeout_s: float) -> None:
    """Poll with every probe request until each has answered 200."""
    deadline = time.monotonic() + timeout_s
    pending = dict(probes)
    last = ""
    while pending:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{tail(server.log_path)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} did not answer in time ({last}):\n{tail(server.log_path)}"
            )
        for key, req in list(pending.items()):
            try:
                status, body = post(server.base + req.path, req.body, req.headers, 30.0)
            except OSError as exc:
                last = type(exc).__name__
                continue
            if status == 200:
                del pending[key]
            else:
                last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.5)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def get(url: str, timeout: float = 30.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return bytes(resp.read())


def pids_with_token(token: str) -> list[int]:
    """Processes whose environment holds ``BENCH_PEER_TOKEN=token``: everything one peer
    started, including daemons in sessions of their own (Ray's raylet and workers)."""
    found = []
    marker = f"BENCH_PEER_TOKEN={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def stop(server: Server) -> None:
    """Kill the peer's process group, then whatever else it started that still runs."""
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_with_token(server.token)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        time.sleep(3)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- report

_PATHS = {
    "kserve": "KServe custom kserve.Model served by ModelServer().start "
    "(benchmarks/peers/kserve): V1 JSON, the photo as {'instances': [{'image': {'b64': ...}}]}; "
    "workers = uvicorn worker processes (--workers)",
    "mlserver": "Seldon MLServer custom MLModel (benchmarks/peers/mlserver): V2 JSON, the photo "
    "as a BYTES input in base64 (content_type base64, MLServer's Base64Codec); "
    "workers = parallel_workers (inference worker processes)",
    "pytriton": "Triton Inference Server through PyTriton (benchmarks/peers/pytriton): V2 "
    "binary tensor data, the photo as a BYTES tensor; dynamic batching (max_batch_size 16, "
    "max_queue_delay 2 ms); workers = model instances",
    "litserve": "LitServe LitAPI (benchmarks/peers/litserve): JSON, the photo in base64; "
    "workers = workers_per_device (inference processes a model)",
    "bentoml": "BentoML service (benchmarks/peers/bentoml): JSON, the photo in base64; "
    "workers = service workers (processes)",
    "rayserve": "Ray Serve deployment (benchmarks/peers/rayserve): the photo as the raw body "
    "(image/jpeg), one application a model, Ray Serve's throughput-optimized mode; "
    "workers = replicas a model",
    "floor": "not a serving system: raw's work (cidserve's preprocessing, a session built as "
    "raw's, top 5 by NumPy) behind the least HTTP a Python server adds "
    "(benchmarks/peers/floor): cidserve's JSON body, uvloop + httptools, orjson, one hand-off "
    "to a thread pool, a run alone on a session of one thread a core; workers = threads",
}


def describe() -> dict[str, Any]:
    """Per peer: what its path includes and the settings it runs with, for the report."""
    common = (
        "; each decodes and preprocesses the photo as cidserve does "
        "(benchmarks/peers/imageprep.py), runs ONNX Runtime on the CPU and answers the top 5"
    )
    return {
        name: {"path": _PATHS[name] + ("" if name == FLOOR else common), **asdict(settings)}
        for name, settings in SETTINGS.items()
    }
