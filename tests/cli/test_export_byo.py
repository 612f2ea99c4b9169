"""``cidserve export`` / ``publish`` of a user's own PyTorch model: a state dict and its
architecture, or a TorchScript file, exported, verified against torch, served.

The networks are tiny modules in a file each test writes (``nets.py``), so every export takes
a fraction of a second; the command runs in this process (``main``) except where a real
process is the point.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from registry.export_verify import max_abs_error
from registry.local_store import LocalContentStore
from registry.torch_source import load_architecture
from services.cli.main import build_parser
from services.settings import load_settings
from tests.conftest import Gateway

CIDSERVE = [sys.executable, "-m", "services.cli"]

NETS = '''
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def wide_mlp():
    return MLP(hidden=32)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(3, 2)

    def forward(self, a, b):
        return self.a(a) * self.b(b)


class Switch(nn.Module):
    """Doubles its input once a value passes 100; a trace keeps only the branch it took."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        if bool((x > 100).any()):
            return x * self.scale * 2
        return x * self.scale


def broken():
    raise RuntimeError("the layer sizes are not configured")
'''


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``nets.py`` in a fresh folder, which is also the working directory and data dir."""
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIDSERVE_DATA_DIR", str(tmp_path / "data"))
    return path


def _net(nets: Path, name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = load_architecture(f"{nets}:{name}")
    for module in model.modules():  # running statistics that matter
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _checkpoint(nets: Path, name: str, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    model = _net(nets, name, seed)
    path = nets.parent / f"{name.lower()}.pt"
    torch.save(model.state_dict(), path)
    return path, model


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``cidserve ARGV`` in this process (its logging set-up left out: the gateway's)."""
    args = build_parser().parse_args(list(argv))
    code = int(args.func(args, load_settings()))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail cleanly: non-zero, one line on stderr; that line."""
    code, _, err = _run(capsys, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _torch(model: torch.nn.Module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(a) for a in arrays)).numpy()


def _v2_infer(gateway: Gateway, model_id: str, name: str, x: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    r = gateway.client.post(f"/v2/models/{model_id}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_checkpoint_exports_verified_and_the_served_model_matches_torch(
    nets: Path,
    capsys: pytest.CaptureFixture[str],
    gateway: Gateway,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    checkpoint, model = _checkpoint(nets, "ConvNet")
    onnx_path = nets.parent / "convnet.onnx"
    code, out, err = _run(
        capsys,
        "export",
        str(checkpoint),
        str(onnx_path),
        "--arch",
        f"{nets}:ConvNet",
        "--input-shape",
        "1,3,8,8",
    )
    assert code == 0, err
    assert "max abs error" in out and "tolerance 0.0001" in out
    assert onnx_path.is_file()

    # Published into the gateway's store; the export's figures travel with the file.
    monkeypatch.setenv("CIDSERVE_DATA_DIR", str(workdir / "data"))
    code, out, err = _run(capsys, "publish", str(onnx_path), "--name", "byo-conv", "--json")
    assert code == 0, err
    published = json.loads(out)
    store = LocalContentStore(workdir / "data" / "store")
    metadata = json.loads(store.blob_path(published["metadataCid"]).read_bytes())
    tools = metadata["tools"]
    assert tools["export.torch"] == torch.__version__
    assert tools["export.onnxruntime"] == ort.__version__
    assert float(tools["export.max_abs_error"]) <= 1e-4
    assert metadata["inputs"][0]["shape"][0] == "batch"

    r = gateway.client.post("/api/models/load", json={"metadataCid": published["metadataCid"]})
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    x = np.random.default_rng(7).standard_normal((3, 3, 8, 8), dtype=np.float32)
    served = _v2_infer(gateway, model_id, "input", x)
    np.testing.assert_allclose(served, _torch(model, x), atol=1e-4)


def test_publish_exports_a_checkpoint_first(nets: Path, gateway: Gateway, workdir: Path):
    """A real process: ``publish SOURCE.pt --arch ... --input-shape ...``, then served."""
    checkpoint, model = _checkpoint(nets, "MLP", seed=3)
    env = {**os.environ, "CIDSERVE_DATA_DIR": str(workdir / "data")}
    proc = subprocess.run(
        [
            *CIDSERVE,
            "publish",
            str(checkpoint),
            "--arch",
            f"{nets}:MLP",
            "--input-shape",
            "1,4",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "max abs error" in proc.stderr
    published = json.loads(proc.stdout)
    assert published["name"] == "mlp"
    r = gateway.client.post("/api/models/load", json={"metadataCid": published["metadataCid"]})
    assert r.status_code == 200, r.text
    model_id = r.json()["model_id"]
    x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(
        _v2_infer(gateway, model_id, "input", x), _torch(model, x), atol=1e-5
    )
    # The tensor route runs it too, through the default classification postprocessing.
    r = gateway.client.post(
        "/api/inference/execute",
        json={"model_id": model_id, "input_data": {"format": "tensor", "content": x.tolist()}},
    )
    assert r.status_code == 200, r.text
    logits = _torch(model, x)[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = r.json()["predictions"][0]
    assert top["class_id"] == int(logits.argmax())
    assert top["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_torchscript_needs_no_arch(nets: Path, capsys: pytest.CaptureFixture[str]):
    model = _net(nets, "ConvNet", seed=5)
    scripted = nets.parent / "convnet.ts.pt"
    torch.jit.script(model).save(str(scripted))
    out = nets.parent / "scripted.onnx"
    code, _, err = _run(capsys, "export", str(scripted), str(out), "--input-shape", "1,3,8,8")
    assert code == 0, err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], _torch(model, x), atol=1e-4)

    line = _refused(
        capsys,
        "export",
        str(scripted),
        str(out),
        "--arch",
        f"{nets}:ConvNet",
        "--input-shape",
        "1,3,8,8",
    )
    assert "TorchScript" in line and "--arch" in line


def test_two_inputs_with_their_names(nets: Path, capsys: pytest.CaptureFixture[str]):
    checkpoint, model = _checkpoint(nets, "TwoInputs")
    out = nets.parent / "two.onnx"
    code, _, err = _run(
        capsys,
        "export",
        str(checkpoint),
        str(out),
        "--arch",
        f"{nets}:TwoInputs",
        "--input-shape",
        "1,4",
        "--input-shape",
        "1,3",
        "--input-name",
        "left",
        "--input-name",
        "right",
        "--output-name",
        "product",
    )
    assert code == 0, err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        ("left", ["batch", 4]),
        ("right", ["batch", 3]),
    ]
    assert [o.name for o in session.get_outputs()] == ["product"]
    rng = np.random.default_rng(2)
    a = rng.standard_normal((5, 4), dtype=np.float32)
    b = rng.standard_normal((5, 3), dtype=np.float32)
    got = session.run(None, {"left": a, "right": b})[0]
    np.testing.assert_allclose(got, _torch(model, a, b), atol=1e-5)

    line = _refused(
        capsys,
        "export",
        str(checkpoint),
        str(out.with_name("x.onnx")),
        "--arch",
        f"{nets}:TwoInputs",
        "--input-shape",
        "1,4",
        "--input-shape",
        "1,3",
        "--input-name",
        "only-one",
    )
    assert "1 input name(s) given for 2 input(s)" in line


def test_a_checkpoint_that_does_not_fit_is_named(nets: Path, capsys: pytest.CaptureFixture[str]):
    checkpoint, _ = _checkpoint(nets, "MLP")
    out = nets.parent / "out.onnx"
    line = _refused(
        capsys,
        "export",
        str(checkpoint),
        str(out),
        "--arch",
        f"{nets}:ConvNet",
        "--input-shape",
        "1,3,8,8",
    )
    assert "does not fit ConvNet" in line
    assert "missing keys conv.weight" in line and "unexpected keys fc1.weight" in line

    line = _refused(
        capsys,
        "export",
        str(checkpoint),
        str(out),
        "--arch",
        f"{nets}:wide_mlp",
        "--input-shape",
        "1,4",
    )
    assert "shape mismatch fc1.weight (checkpoint [16, 4], model [32, 4])" in line

    # A whole pickled module is refused without being unpickled.
    whole = nets.parent / "whole.pt"
    torch.save(torch.nn.Linear(4, 3), whole)
    line = _refused(
        capsys, "export", str(whole), str(out), "--arch", f"{nets}:MLP", "--input-shape", "1,4"
    )
    assert "holds Python objects" in line and "torch.nn.modules.linear.Linear" in line
    assert not out.exists()


def test_missing_files(nets: Path, capsys: pytest.CaptureFixture[str]):
    checkpoint, _ = _checkpoint(nets, "MLP")
    out = nets.parent / "out.onnx"
    arch = f"{nets}:MLP"
    line = _refused(capsys, "export", "absent.pt", str(out), "--arch", arch, "--input-shape", "1,4")
    assert line == "cidserve export: absent.pt: no such file"
    line = _refused(
        capsys,
        "export",
        str(checkpoint),
        str(out),
        "--arch",
        "absent.py:MLP",
        "--input-shape",
        "1,4",
    )
    assert "no such file: absent.py" in line
    line = _refused(
        capsys,
        "export",
        str(checkpoint),
        str(out),
        "--arch",
        arch,
        "--input-shape",
        "1,4",
        "--sample",
        "absent.npy",
    )
    assert "--sample absent.npy: no such file" in line
    line = _refused(capsys, "export", str(checkpoint), str(out), "--arch", arch)
    assert "--input-shape" in line
    line = _refused(capsys, "publish", "absent.pt", "--arch", arch, "--input-shape", "1,4")
    assert line == "cidserve publish: absent.pt: no such file"
    assert not out.exists()


def test_a_failing_architecture_callable(nets: Path, capsys: pytest.CaptureFixture[str]):
    checkpoint, _ = _checkpoint(nets, "MLP")
    out = nets.parent / "out.onnx"
    bad_import = nets.parent / "bad_import.py"
    bad_import.write_text("import no_such_module_for_cidserve\n")
    cases = {
        f"{nets}:broken": "calling broken() failed: RuntimeError: the layer sizes are not",
        f"{bad_import}:Net": "ModuleNotFoundError: No module named 'no_such_module_for_cidserve'",
        f"{nets}:Absent": "has no attribute 'Absent'",
        "no_such_package_for_cidserve.models:Net": "cannot import no_such_package_for_cidserve",
        f"{nets}": "expected FILE.py:CALLABLE or package.module:CALLABLE",
    }
    for arch, expected in cases.items():
        line = _refused(
            capsys, "export", str(checkpoint), str(out), "--arch", arch, "--input-shape", "1,4"
        )
        assert line.startswith("cidserve export: --arch") and expected in line, line
    assert not out.exists()


def test_a_sample_that_shows_a_difference_fails_the_export(
    nets: Path, capsys: pytest.CaptureFixture[str]
):
    checkpoint, _ = _checkpoint(nets, "Switch")
    out = nets.parent / "switch.onnx"
    argv = ["export", str(checkpoint), str(out), "--arch", f"{nets}:Switch", "--input-shape", "1,4"]
    sample = nets.parent / "large.npy"
    np.save(sample, np.full((2, 4), 1000.0, dtype=np.float32))
    code, _, err = _run(capsys, *argv, "--sample", str(sample))
    assert code == 1
    last = err.strip().splitlines()[-1]  # above it: torch's own trace warning
    assert last == (
        "cidserve export: ONNX Runtime differs from torch on the sample input: "
        "max abs error 1e+03 > tolerance 0.0001"
    )
    assert not out.exists()

    # The random inputs alone take the traced branch: the export passes, at tolerance 0 too.
    code, stdout, err = _run(capsys, *argv, "--tolerance", "0")
    assert code == 0, err
    assert "max abs error 0 <= tolerance 0" in stdout

    wrong = nets.parent / "wrong.npy"
    np.save(wrong, np.zeros((2, 5), dtype=np.float32))
    line = _refused(capsys, *argv, "--sample", str(wrong))
    assert "has shape [2, 5]; the input is ['batch', 4]" in line


def test_max_abs_error():
    a = [np.array([1.0, 2.0, np.nan, np.inf], dtype=np.float32)]
    assert max_abs_error(a, [np.array([1.0, 2.5, np.nan, np.inf])]) == 0.5
    assert max_abs_error(a, [np.array([1.0, 2.0, 3.0, np.inf])]) == math.inf
    assert max_abs_error(a, [np.zeros(3)]) == math.inf
    assert max_abs_error(a, []) == math.inf


def test_built_in_models_take_no_pytorch_options(capsys: pytest.CaptureFixture[str], tmp_path):
    line = _refused(
        capsys, "export", "resnet18", str(tmp_path / "r.onnx"), "--input-shape", "1,3,224,224"
    )
    assert "--input-shape applies to checkpoints" in line


@pytest.mark.parametrize("shape", ["1,three", "0,4", ""])
def test_a_bad_shape_is_a_usage_error(shape: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["export", "m.pt", "m.onnx", "--input-shape", shape])
    assert exc.value.code == 2
    assert "--input-shape" in capsys.readouterr().err
