"""Finding kinds by entry point: broken plug-ins are logged once and left out, cidserve's own
kinds win a name clash, in-process registration, and default capabilities."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import postprocessing as post
import preprocessing as pp
import registry.kinds
from postprocessing import PostprocessingKind, PostprocessingOptions
from postprocessing.score import KIND as SCORE
from preprocessing.tensor import TensorPreprocessing
from registry.kinds import KindTable
from registry.metadata import MetadataError, ModelMetadata, PostprocessingSpec, now_utc

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@dataclass
class _Dist:
    name: str


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    dist: _Dist | None = None

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        return getattr(import_module(module), attr)


def _table(monkeypatch: pytest.MonkeyPatch, eps: list[FakeEntryPoint]) -> KindTable[Any, Any]:
    groups: list[str] = []

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        groups.append(group)
        return eps

    monkeypatch.setattr(registry.kinds, "entry_points", fake_entry_points)
    table: KindTable[Any, Any] = KindTable(
        "postprocessing", post.GROUP, PostprocessingKind, PostprocessingSpec
    )
    table.names()
    table.names()
    assert groups == [post.GROUP]  # read once, then cached
    return table


def test_a_broken_plugin_is_logged_once_and_the_others_keep_working(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "cidserve_broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.ERROR, logger="cidserve.plugins")
    table = _table(
        monkeypatch,
        [
            FakeEntryPoint("score", "postprocessing.score:KIND", _Dist("cidserve")),
            FakeEntryPoint("exploding", "cidserve_broken_plugin:KIND", _Dist("broken-dist")),
            FakeEntryPoint("missing", "cidserve_no_such_module:KIND", _Dist("gone-dist")),
            FakeEntryPoint("not_a_kind", "json:dumps", _Dist("odd-dist")),
        ],
    )
    assert table.names() == ["score"]
    assert table.get("score") is SCORE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3
    assert any("'exploding'" in e and "broken-dist" in e and "boom at import" in e for e in errors)
    assert any("'missing'" in e and "gone-dist" in e and "ModuleNotFoundError" in e for e in errors)
    assert any("'not_a_kind'" in e and "not a PostprocessingKind" in e for e in errors)

    with pytest.raises(MetadataError) as err:
        table.get("exploding")
    assert err.value.field == "postprocessing.kind"
    assert "failed to load (RuntimeError: boom at import)" in str(err.value)
    assert "installed kinds: score" in str(err.value)


def test_cidserve_keeps_its_own_kind_names(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR, logger="cidserve.plugins")
    table = _table(
        monkeypatch,
        [
            FakeEntryPoint("score", "postprocessing.classification:KIND", _Dist("squatter")),
            FakeEntryPoint("score", "postprocessing.score:KIND", _Dist("cidserve")),
        ],
    )
    assert table.get("score") is SCORE
    assert any("squatter" in r.getMessage() for r in caplog.records)


class Doubled(PostprocessingOptions):
    factor: float = 2.0


def _doubled(metadata: ModelMetadata, options: Doubled, labels: list[str] | None) -> Any:
    def run(outputs: dict[str, np.ndarray], context: dict[str, Any], opts: post.Options) -> Any:
        value = float(outputs["y"].sum()) * options.factor
        return post.Result(predictions=[], details={"value": value})

    return run  # a plain function: create() gives it the default capabilities


def test_register_in_process_with_a_plain_function_factory():
    post.register("doubled", PostprocessingKind(options=Doubled, factory=_doubled))
    try:
        assert "doubled" in post.kinds()
        md = ModelMetadata(
            name="m",
            version="1",
            model={"cid": CID, "size": 1, "sha256": "0" * 64, "opset": 17},
            inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 2]}],
            outputs=[{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
            preprocessing=TensorPreprocessing(),
            postprocessing={"kind": "doubled", "factor": 3},
            created_at=now_utc(),
        )
        run = post.create(md, None)
        assert run.classification_output is None
        result = run({"y": np.array([[1.0, 2.0]])}, {}, post.Options())
        assert result.details == {"value": 9.0}
        assert post.validate_options(md.postprocessing).model_dump() == {
            "kind": "doubled",
            "output": None,
            "factor": 3.0,
        }
        with pytest.raises(MetadataError, match=r"postprocessing\.factor"):
            post.validate_options({"kind": "doubled", "factor": "lots"})
        pre = pp.create(md, pp.Limits())
        assert pre.image_input is None
        assert pre.warmup_shapes() == {}
    finally:
        post.KINDS.unregister("doubled")
    assert "doubled" not in post.kinds()


def test_register_refuses_what_is_not_a_kind():
    with pytest.raises(TypeError, match="PreprocessingKind"):
        pp.register("nothing", object())  # type: ignore[arg-type]


def test_the_built_in_kinds_come_from_cidserves_entry_points():
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group=pp.GROUP)}
    assert declared["image"] == "preprocessing.image:KIND"
    assert {"image", "tensor", "tabular"} <= set(pp.kinds())
    assert {"classification", "detection", "score"} <= set(post.kinds())
    assert {ep.name for ep in entry_points(group=post.GROUP)} >= set(post.kinds()) - {"doubled"}
