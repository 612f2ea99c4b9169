"""The open ``preprocessing`` / ``postprocessing`` spec: same documents and CIDs as the closed
schema had, options validated by each kind (naming the field), capabilities of the built-ins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import postprocessing as post
import preprocessing as pp
from postprocessing.classification import ClassificationPostprocessing
from postprocessing.detection import DetectionPostprocessing
from postprocessing.score import ScorePostprocessing
from preprocessing.image_options import ImagePreprocessing, MeanStd
from preprocessing.tabular import Feature, TabularPreprocessing
from preprocessing.tensor import TensorPreprocessing
from registry.metadata import (
    MetadataError,
    ModelMetadata,
    PostprocessingSpec,
    PreprocessingSpec,
    TensorSpec,
    now_utc,
    parse_metadata,
)
from registry.presets import PRESETS, preset_preprocessing
from registry.publish import TASKS, default_postprocessing
from registry.unixfs import cid_of_bytes

ROOT = Path(__file__).resolve().parents[2]
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
_HEAD = (
    '{"cache_predictions":true,"created_at":"2026-11-22T00:44:36Z","description":"d",'
    '"inputs":[{"dtype":"float32","name":"x","shape":%s}],"model":{"cid":"' + CID + '",'
    '"format":"onnx","opset":17,"sha256":"' + "a" * 64 + '","size":10},"name":"m",'
    '"outputs":[{"dtype":"float32","name":"y","shape":["batch",4]}],'
)
_TAIL = ',"schema_version":"cidserve.metadata/v1","tools":{"onnx":"1.0"},"version":"1"}'

# Canonical documents written by the closed schema (before kinds became plug-ins), and the
# CIDs of those bytes. The open spec must read and write them byte for byte.
GOLDEN = {
    "bafkreidlbsm7klnzjvt7dtg3r4tbexpnt2axq2l35zvzgkcsvnjfrpvxxi": _HEAD % '["batch",3,224,224]'
    + '"postprocessing":{"kind":"classification","labels":null,"labels_cid":"'
    + CID
    + '","output":"y","softmax":true},"preprocessing":{"channel_order":"RGB",'
    '"crop_ratio":0.875,"input":"x","interpolation":"bilinear","kind":"image",'
    '"layout":"NCHW","normalize":{"mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225],'
    '"type":"mean_std"},"pad_value":114,"resize_mode":"shorter_side","size":[224,224]}' + _TAIL,
    "bafkreihrragkhobp2e6uww4eqo4boozvltxzje7wbm4wunaqznisdxnjxe": _HEAD
    % '["batch",2]'
    + '"postprocessing":{"clamp":false,"kind":"score","label":"score","output":"y",'
    '"sigmoid":false},"preprocessing":{"features":[{"default":null,"max":null,"min":0.0,'
    '"name":"a","offset":1.0,"scale":2.0},{"default":null,"max":null,"min":null,"name":"b",'
    '"offset":0.0,"scale":1.0}],"input":null,"kind":"tabular"}' + _TAIL,
    "bafkreig5bxjoln6vmmb3vkc6iihosbjswzxstytwevo2tfjnykspgxnv7u": _HEAD
    % '["batch",160,200,3]'
    + '"postprocessing":{"format":"yolov8","iou_threshold":0.45,"kind":"detection",'
    '"labels":null,"labels_cid":"' + CID + '","max_detections":100,"output":"y",'
    '"score_threshold":0.25},"preprocessing":{"channel_order":"RGB","crop_ratio":1.0,'
    '"input":null,"interpolation":"bilinear","kind":"image","layout":"NHWC","normalize":'
    '{"offset":0.0,"scale":0.5,"type":"scale_offset"},"pad_value":114,"resize_mode":'
    '"letterbox","size":[160,200]}' + _TAIL,
    "bafkreia3vd7wciazg5nlkfdxkpudnxyyf2pdlxfppmki2dpigkntqox6ae": _HEAD
    % '["batch",3,224,224]'
    + '"postprocessing":{"kind":"classification","labels":null,"labels_cid":null,'
    '"output":"y","softmax":true},"preprocessing":{"input":"x","kind":"tensor"}' + _TAIL,
}


@pytest.mark.parametrize("cid", sorted(GOLDEN))
def test_published_documents_parse_and_serialize_byte_for_byte(cid: str):
    raw = GOLDEN[cid].encode()
    assert cid_of_bytes(raw) == cid
    md = parse_metadata(raw)
    assert md.to_json_bytes() == raw
    # Each kind accepts its document as is, and writes it out the same.
    assert pp.validate_options(md.preprocessing) == md.preprocessing
    assert post.validate_options(md.postprocessing) == md.postprocessing
    rebuilt = md.model_copy(
        update={
            "preprocessing": pp.validate_options(md.preprocessing.model_dump()),
            "postprocessing": post.validate_options(md.postprocessing.model_dump()),
        }
    )
    assert cid_of_bytes(rebuilt.to_json_bytes()) == cid


def _metadata(pre: Any, postspec: Any, shape: list[Any] | None = None) -> ModelMetadata:
    return ModelMetadata(
        name="m",
        version="1",
        model={"cid": CID, "size": 1, "sha256": "0" * 64, "opset": 17},
        inputs=[{"name": "x", "dtype": "float32", "shape": shape or ["batch", 3, 224, 224]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": ["batch", 4]}],
        preprocessing=pre,
        postprocessing=postspec,
        created_at=now_utc(),
    )


def test_options_models_and_json_objects_make_the_same_document():
    image = ImagePreprocessing(
        input="x", size=(224, 224), normalize=MeanStd(mean=(0.5,) * 3, std=(0.5,) * 3)
    )
    classify = ClassificationPostprocessing(output="y", labels_cid=CID)
    by_model = _metadata(image, classify)
    by_json = _metadata(
        pp.validate_options(json.loads(image.model_dump_json())),
        post.validate_options({"kind": "classification", "output": "y", "labels_cid": CID}),
    )
    assert by_model.to_json_bytes() == by_json.to_json_bytes()
    assert isinstance(by_model.preprocessing, PreprocessingSpec)
    assert by_model.postprocessing.labels_cid == CID  # read generically by the loader
    assert getattr(by_model.postprocessing, "labels", None) is None
    assert by_model.preprocessing.size == [224, 224]  # a kind's option, kept as given


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_what_the_image_kind_writes(preset: str):
    spec = preset_preprocessing(preset, TensorSpec(name="x", dtype="float32", shape=[1, 3, 9, 9]))
    assert pp.validate_options(spec).model_dump() == spec.model_dump()


@pytest.mark.parametrize(
    ("task", "labels_cid"),
    [(task, None) for task in TASKS] + [("classification", CID), ("detection", CID)],
)
def test_default_postprocessing_is_what_the_kind_writes(task: str, labels_cid: str | None):
    out = TensorSpec(name="y", dtype="float32", shape=["batch", 4])
    spec = default_postprocessing(task, labels_cid, out)
    assert post.validate_options(spec).model_dump() == spec.model_dump()


@pytest.mark.parametrize(
    ("section", "change", "field", "message"),
    [
        ("preprocessing", {"crop_ratio": 3.5}, "preprocessing.crop_ratio", "less than or equal"),
        ("preprocessing", {"size": [224]}, "preprocessing.size.1", "Field required"),
        (
            "preprocessing",
            {"normalize": {"type": "mean_std", "mean": [0] * 3, "std": [0] * 3}},
            "preprocessing.normalize.std",
            "std must not contain 0",
        ),
        ("preprocessing", {"resize_mod": "stretch"}, "preprocessing.resize_mod", "Extra inputs"),
        ("preprocessing", {"kind": "sepia"}, "preprocessing.kind", "unknown kind 'sepia'"),
        ("postprocessing", {"softmax": "maybe"}, "postprocessing.softmax", "boolean"),
        ("postprocessing", {"kind": "score"}, "postprocessing.labels", "Extra inputs"),
        ("postprocessing", {"kind": "embedding"}, "postprocessing.kind", "classification, "),
    ],
)
def test_a_kind_refuses_bad_options_naming_the_field(
    section: str, change: dict[str, Any], field: str, message: str
):
    raw = GOLDEN["bafkreidlbsm7klnzjvt7dtg3r4tbexpnt2axq2l35zvzgkcsvnjfrpvxxi"]
    doc = json.loads(raw)
    doc[section].update(change)
    md = parse_metadata(json.dumps(doc).encode())  # the document itself is well formed
    package = pp if section == "preprocessing" else post
    for check in (
        lambda: package.validate_options(getattr(md, section)),
        lambda: pp.create(md, pp.Limits()) if package is pp else post.create(md, None),
    ):
        with pytest.raises(MetadataError) as err:
            check()
        assert err.value.field == field
        assert str(err.value).startswith(f"invalid metadata: {field}: ")
        assert message in str(err.value)


def test_the_generic_fields_are_still_checked_when_the_document_is_parsed():
    doc = json.loads(GOLDEN["bafkreidlbsm7klnzjvt7dtg3r4tbexpnt2axq2l35zvzgkcsvnjfrpvxxi"])
    for section, change, field in [
        ("postprocessing", {"labels_cid": "not-a-cid"}, "postprocessing.labels_cid"),
        ("preprocessing", {"kind": "no spaces"}, "preprocessing.kind"),
        ("preprocessing", {"input": 3}, "preprocessing.input"),
    ]:
        bad = json.loads(json.dumps(doc))
        bad[section].update(change)
        with pytest.raises(MetadataError) as err:
            parse_metadata(json.dumps(bad).encode())
        assert err.value.field == field
    bad = json.loads(json.dumps(doc))
    bad["unknown"] = 1
    with pytest.raises(MetadataError, match="unknown: Extra inputs"):
        parse_metadata(json.dumps(bad).encode())


def test_metadata_stays_frozen():
    md = parse_metadata(
        GOLDEN["bafkreia3vd7wciazg5nlkfdxkpudnxyyf2pdlxfppmki2dpigkntqox6ae"].encode()
    )
    with pytest.raises(ValueError, match="frozen"):
        md.preprocessing.input = "z"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        md.postprocessing.softmax = False  # type: ignore[attr-defined]


def test_capabilities_of_the_built_in_kinds():
    classify = ClassificationPostprocessing(output="y")
    nchw = _metadata(ImagePreprocessing(size=(200, 160)), classify, ["batch", 3, 200, 160])
    pre = pp.create(nchw, pp.Limits())
    assert pre.image_input == "x"
    assert pre.warmup_shapes() == {"x": [1, 3, 200, 160]}
    nhwc = _metadata(ImagePreprocessing(size=(200, 160), layout="NHWC"), classify, [1, 200, 160, 3])
    assert pp.create(nhwc, pp.Limits()).warmup_shapes() == {"x": [1, 200, 160, 3]}

    tensor = _metadata(TensorPreprocessing(), classify, ["batch", 8])
    assert pp.create(tensor, pp.Limits()).image_input is None
    assert pp.create(tensor, pp.Limits()).warmup_shapes() == {}
    tabular = _metadata(TabularPreprocessing(features=[Feature(name="a")]), classify, ["b", "n"])
    assert pp.create(tabular, pp.Limits()).image_input is None
    assert pp.create(tabular, pp.Limits()).warmup_shapes() == {"x": [1, 1]}

    run = post.create(_metadata(TensorPreprocessing(), classify), ["a", "b", "c", "d"])
    assert run.classification_output == "y"
    row = np.array([0.1, 3.0, 0.2, 0.3], np.float32)
    top = run({"y": row[None]}, {}, post.Options(top_k=2)).predictions
    assert [(p["class"], p["class_id"]) for p in top] == [("b", 1), ("d", 3)]
    assert 0 < top[1]["confidence"] < top[0]["confidence"] <= 1
    for spec in (DetectionPostprocessing(), ScorePostprocessing()):
        shape = [1, 8, 4] if isinstance(spec, DetectionPostprocessing) else ["batch", 1]
        md = _metadata(TensorPreprocessing(), spec).model_copy(
            update={"outputs": [TensorSpec(name="y", dtype="float32", shape=shape)]}
        )
        assert post.create(md, None).classification_output is None


def test_registry_imports_no_layer_above_it():
    code = (
        "import sys, registry.metadata, registry.kinds, registry.presets, registry.publish\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('preprocessing', 'postprocessing', 'services'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_spec_types_keep_the_names_the_cli_uses():
    from registry.metadata import Postprocessing, Preprocessing

    assert Preprocessing is PreprocessingSpec
    assert Postprocessing is PostprocessingSpec
