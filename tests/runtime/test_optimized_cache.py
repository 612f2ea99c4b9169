"""The on-disk cache of optimized ONNX graphs: reused on reload, same outputs, self-healing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.runtime.optimized_cache import OptimizedGraphCache
from services.runtime.options import SessionConfig
from services.runtime.providers import CPU
from services.runtime.session import create_session
from tests.models import linear_model


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(tmp_path: Path) -> SessionConfig:
    return SessionConfig(execution_provider="cpu", optimized_cache_dir=tmp_path / "optimized")


def test_second_load_uses_the_cached_graph_with_identical_outputs(
    tmp_path: Path, efficientnet_onnx: Path
) -> None:
    config = _config(tmp_path)
    sha = _sha(efficientnet_onnx)
    first, provider, _ = create_session(efficientnet_onnx, config, sha256=sha)
    assert provider == CPU
    cached = OptimizedGraphCache(config.optimized_cache_dir).path_for(sha, CPU)  # type: ignore[arg-type]
    assert cached.is_file() and cached.stat().st_size > 0
    stat = cached.stat()
    second, _, _ = create_session(efficientnet_onnx, config, sha256=sha)
    assert cached.stat().st_mtime_ns == stat.st_mtime_ns  # read, not rewritten
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    plain = ort.InferenceSession(str(efficientnet_onnx), providers=[CPU])
    want = plain.run(None, {"input": x})[0]
    np.testing.assert_allclose(first.run(None, {"input": x})[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second.run(None, {"input": x})[0], want, rtol=1e-5, atol=1e-5)


def test_reload_runs_the_cached_file_not_the_model(tmp_path: Path) -> None:
    """Proof that the cached graph is what runs: swap in another valid graph (with a matching
    digest) and the reload computes with it."""
    config = _config(tmp_path)
    model = linear_model(tmp_path / "a.onnx", seed=1)
    sha = _sha(model)
    create_session(model, config, sha256=sha)
    cached = OptimizedGraphCache(config.optimized_cache_dir).path_for(sha, CPU)  # type: ignore[arg-type]
    other = linear_model(tmp_path / "b.onnx", seed=2)
    cached.write_bytes(other.read_bytes())
    cached.with_name(cached.name + ".sha256").write_text(_sha(other) + "\n")
    session, _, _ = create_session(model, config, sha256=sha)
    x = np.ones((1, 8), dtype=np.float32)
    want = ort.InferenceSession(str(other), providers=[CPU]).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-6)


def test_corrupt_cached_file_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    config = _config(tmp_path)
    model = linear_model(tmp_path / "m.onnx", seed=5)
    sha = _sha(model)
    create_session(model, config, sha256=sha)
    cached = OptimizedGraphCache(config.optimized_cache_dir).path_for(sha, CPU)  # type: ignore[arg-type]
    good = cached.read_bytes()
    x = np.full((3, 8), 0.25, dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=[CPU]).run(None, {"x": x})[0]
    for garbage in (b"not a protobuf at all" * 10, good[: len(good) // 2]):
        cached.write_bytes(garbage)  # the sidecar digest no longer matches
        session, _, _ = create_session(model, config, sha256=sha)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-6)
        assert cached.read_bytes() != garbage  # rebuilt
        assert (cached.with_name(cached.name + ".sha256").read_text().strip()) == _sha(cached)
    # A garbage file whose sidecar matches (so only ONNX Runtime can tell) is rebuilt too.
    cached.write_bytes(b"\x00garbage")
    cached.with_name(cached.name + ".sha256").write_text(_sha(cached) + "\n")
    session, _, _ = create_session(model, config, sha256=sha)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-6)
    assert cached.read_bytes() != b"\x00garbage"


def test_without_a_cache_dir_nothing_is_written(tmp_path: Path) -> None:
    model = linear_model(tmp_path / "m.onnx", seed=6)
    create_session(model, SessionConfig(execution_provider="cpu"), sha256=_sha(model))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
