"""The peer serving systems of the side-by-side benchmark: their venvs and their servers.

Each peer (Seldon MLServer, BentoML, Ray Serve) is pip-installed into its own virtualenv under
``benchmarks/.venvs/<name>`` (git-ignored; created once from
``benchmarks/peers/<name>/requirements.txt`` and reused while that file is unchanged) with the
machine's pip, so none of them shares a dependency with cidserve or with each other. Each one
serves the same ONNX files with the code in ``benchmarks/peers/<name>/``, as its own process
group on a free 127.0.0.1 port; :func:`start` health-polls it with a real inference request and
the caller kills it with :func:`stop`.

All three take a float32 tensor (the model's input, already preprocessed): MLServer as a V2
JSON tensor, BentoML and Ray Serve as a JSON nested list. No peer decodes or preprocesses the
image here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
VENVS_DIR = HERE / ".venvs"
HOST = "127.0.0.1"
NAMES = ("mlserver", "bentoml", "rayserve")
START_TIMEOUT_S = {"mlserver": 180.0, "bentoml": 180.0, "rayserve": 300.0}
INSTALL_TIMEOUT_S = 1800


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- venvs


def venv_python(name: str) -> Path:
    return VENVS_DIR / name / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """The peer's venv, created and installed from its requirements file when missing or stale.

    A stamp file holds the hash of the requirements it was built from; torch is never asked
    for, and an install that pulled it in anyway is refused.
    """
    reqs = PEERS_DIR / name / "requirements.txt"
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()
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
    """Versions of the peer's own package and of onnxruntime/numpy in its venv."""
    main = {"mlserver": "mlserver", "bentoml": "bentoml", "rayserve": "ray"}[name]
    code = (
        "import importlib.metadata as m, json; "
        f"print(json.dumps({{p: m.version(p) for p in ({main!r}, 'onnxruntime', 'numpy')}}))"
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


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Request:
    """One ready-made request: path, body (encoded once) and headers, plus a reply check that
    returns the top-1 class index of the reply (or raises)."""

    path: str
    body: bytes
    headers: dict[str, str]
    top1: Callable[[bytes], int]


def _top1_v2_json(reply: bytes) -> int:
    doc = json.loads(reply)
    return int(np.argmax(np.asarray(doc["outputs"][0]["data"], dtype=np.float32)))


def _top1_indices(reply: bytes) -> int:
    return int(json.loads(reply)["indices"][0])


def request_for(name: str, model: str, input_name: str, tensor: np.ndarray) -> Request:
    """The idiomatic request of peer ``name`` carrying ``tensor`` to ``model``."""
    import orjson

    if name == "mlserver":
        doc = {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "data": tensor.reshape(-1).tolist(),
                }
            ]
        }
        return Request(
            f"/v2/models/{model}/infer",
            orjson.dumps(doc),
            {"content-type": "application/json"},
            _top1_v2_json,
        )
    body = orjson.dumps({"model": model, "tensor": tensor.tolist()})
    path = "/predict" if name == "bentoml" else "/"
    return Request(path, body, {"content-type": "application/json"}, _top1_indices)


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


def _mlserver_dir(
    work: Path, models: dict[str, Path], port: int, free_port: Callable[[], int]
) -> Path:
    root = work / "mlserver-models"
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": HOST,
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "debug": False,
            }
        )
    )
    for name, path in models.items():
        d = root / name
        d.mkdir(exist_ok=True)
        (d / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "onnx_runtime_model.OnnxModel",
                    "parameters": {"uri": str(path)},
                }
            )
        )
    return root


def start(
    name: str,
    models: dict[str, Path],
    work: Path,
    free_port: Callable[[], int],
    probes: dict[str, Request],
    intra_op_threads: int,
) -> Server:
    """Start peer ``name`` serving ``models`` and wait until every probe request answers 200."""
    py = ensure_venv(name)
    port = free_port()
    token = f"{name}-{os.getpid()}-{secrets.token_hex(8)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIDSERVE_", "VIRTUAL_ENV"))}
    env.update(
        BENCH_MODELS=",".join(f"{k}={v}" for k, v in models.items()),
        BENCH_PORT=str(port),
        BENCH_INTRA_OP_THREADS=str(intra_op_threads),
        PYTHONPATH=str(PEERS_DIR / name),
        PATH=f"{py.parent}:{env.get('PATH', '')}",
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(work / "bentoml-home"),
        RAY_USAGE_STATS_ENABLED="0",
        NO_PROXY="*",
        BENCH_PEER_TOKEN=token,
    )
    if name == "mlserver":
        cmd = [
            str(py.parent / "mlserver"),
            "start",
            str(_mlserver_dir(work, models, port, free_port)),
        ]
    elif name == "bentoml":
        cmd = [
            str(py.parent / "bentoml"),
            "serve",
            "service:OnnxClassifier",
            "--host",
            HOST,
            "--port",
            str(port),
        ]
    else:
        cmd = [str(py), str(PEERS_DIR / name / "serve_app.py")]
    log_path = work / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=PEERS_DIR / name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, port, log_path, py.parent.parent, token)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S[name]
        pending = dict(probes)
        last = ""
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer in time ({last}):\n{tail(log_path)}")
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
    except BaseException:
        stop(server)
        raise
    return server


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


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


def describe() -> dict[str, Any]:
    """What each peer's path includes, for the report."""
    return {
        "mlserver": "Seldon MLServer, custom MLModel (benchmarks/peers/mlserver): V2 REST JSON "
        "tensor in (FP32 data as a flat list), NumpyCodec decode, session.run, the 1000 logits "
        "back as V2 JSON; default parallel_workers (inference in a worker process)",
        "bentoml": "BentoML service (benchmarks/peers/bentoml): JSON nested list -> np.ndarray, "
        "session.run, top-5 indices/scores as JSON; one worker",
        "rayserve": "Ray Serve deployment (benchmarks/peers/rayserve): JSON nested list via "
        "starlette Request.json(), np.asarray, session.run, top-5 as JSON; one replica",
    }


def get(url: str, timeout: float = 30.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return bytes(resp.read())
