"""Optimized ONNX graphs on disk, so that a reload skips ONNX Runtime's graph optimization.

The first CPU session of a model is created with ``SessionOptions.optimized_model_filepath``:
ONNX Runtime writes the graph after its optimizations (level ``ORT_ENABLE_ALL``). Later
sessions of the same model load that file with optimizations off. The file's name is a key of
everything the optimized graph depends on: the model's sha256, the onnxruntime version, the
execution provider, the optimization level and the CPU (architecture and instruction-set
flags: ``ORT_ENABLE_ALL`` applies layout changes for this hardware). A sidecar ``.sha256``
holds the digest of the optimized file; a file that does not match it, or that ONNX Runtime
cannot load, is ignored, deleted and rebuilt. Files are written under temporary names and
renamed into place, so a reader never sees half a file. CUDA sessions are never cached: their
optimized graphs may hold provider-specific nodes that ONNX Runtime does not promise to
serialize or reload.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
from pathlib import Path

import onnxruntime as ort

from registry.files import AtomicFile, sha256_file
from services.runtime.options import SessionConfig, session_options
from services.runtime.providers import ProviderSpec

log = logging.getLogger("cidserve.optimized_cache")

LEVEL = "all"


@functools.cache
def cpu_signature() -> str:
    """The CPU architecture and a short digest of its feature flags: ``ORT_ENABLE_ALL`` picks
    kernels and layouts (e.g. NCHWc block sizes) by instruction set."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        flags = platform.processor()
    short = hashlib.sha256(flags.encode()).hexdigest()[:8]
    return f"{platform.machine() or 'unknown'}.{short}"


class OptimizedGraphCache:
    """The directory of optimized graphs (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, sha256: str, provider: str) -> Path:
        """Where the optimized graph of the model with ``sha256`` lives."""
        key = "-".join(
            [
                sha256,
                f"ort{ort.__version__}",
                provider.removesuffix("ExecutionProvider").lower(),
                LEVEL,
                cpu_signature(),
            ]
        )
        return self.directory / f"{key}.onnx"

    def session(
        self,
        model_path: Path,
        sha256: str,
        config: SessionConfig,
        providers: list[ProviderSpec],
    ) -> ort.InferenceSession:
        """A session from the cached optimized graph, or from the model (caching its graph)."""
        first = providers[0]
        cached = self.path_for(sha256, first if isinstance(first, str) else first[0])
        sidecar = cached.with_name(cached.name + ".sha256")
        if cached.exists():
            try:
                if sidecar.read_text().strip() != sha256_file(cached):
                    raise ValueError("digest mismatch")
                session = ort.InferenceSession(
                    str(cached),
                    sess_options=session_options(config, optimize=False),
                    providers=providers,
                )
                log.debug("%s: optimized graph from %s", sha256[:12], cached)
                return session
            except Exception as exc:  # corrupt, truncated, foreign: rebuild it
                log.warning("ignoring the cached optimized graph %s (%s); rebuilding", cached, exc)
                for p in (cached, sidecar):
                    p.unlink(missing_ok=True)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            graph = AtomicFile(self.directory, ".opt-", ".onnx")
        except OSError as exc:
            log.warning("cannot cache optimized graphs in %s: %s", self.directory, exc)
            return ort.InferenceSession(
                str(model_path), sess_options=session_options(config), providers=providers
            )
        with graph:
            graph.file.close()  # ONNX Runtime writes it by path
            opts = session_options(config)
            opts.optimized_model_filepath = str(graph.path)
            try:
                session = ort.InferenceSession(
                    str(model_path), sess_options=opts, providers=providers
                )
            except Exception as exc:  # e.g. a graph ONNX Runtime cannot serialize
                log.warning("%s: not caching its optimized graph (%s)", sha256[:12], exc)
                return ort.InferenceSession(
                    str(model_path), sess_options=session_options(config), providers=providers
                )
            if graph.path.stat().st_size > 0:
                digest = sha256_file(graph.path)
                with AtomicFile(self.directory, ".opt-", ".sha256") as side:
                    side.file.write(digest.encode() + b"\n")
                    graph.commit(cached)
                    side.commit(sidecar)
            return session
