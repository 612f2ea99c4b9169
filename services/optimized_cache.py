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
import os
import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

if TYPE_CHECKING:
    from services.runtime import ProviderSpec, SessionConfig

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


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        from services.runtime import session_options

        first = providers[0]
        cached = self.path_for(sha256, first if isinstance(first, str) else first[0])
        sidecar = cached.with_name(cached.name + ".sha256")
        if cached.exists():
            try:
                if sidecar.read_text().strip() != _digest(cached):
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
            fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".opt-", suffix=".onnx")
            os.close(fd)
        except OSError as exc:
            log.warning("cannot cache optimized graphs in %s: %s", self.directory, exc)
            return ort.InferenceSession(
                str(model_path), sess_options=session_options(config), providers=providers
            )
        tmp = Path(tmp_name)
        try:
            opts = session_options(config)
            opts.optimized_model_filepath = str(tmp)
            try:
                session = ort.InferenceSession(
                    str(model_path), sess_options=opts, providers=providers
                )
            except Exception as exc:  # e.g. a graph ONNX Runtime cannot serialize
                log.warning("%s: not caching its optimized graph (%s)", sha256[:12], exc)
                return ort.InferenceSession(
                    str(model_path), sess_options=session_options(config), providers=providers
                )
            if tmp.stat().st_size > 0:
                digest = _digest(tmp)
                side_tmp = tmp.with_name(tmp.name + ".sha256")
                side_tmp.write_text(digest + "\n")
                os.replace(tmp, cached)
                os.replace(side_tmp, sidecar)
            return session
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".sha256").unlink(missing_ok=True)
