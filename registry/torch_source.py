"""Where a user's PyTorch model comes from: a state-dict checkpoint plus its architecture, or a
TorchScript file.

* :func:`is_torchscript` tells a TorchScript archive (``torch.jit.save``) from a checkpoint
  (``torch.save``) by its content, whatever the file is called.
* :func:`load_architecture` builds the ``nn.Module`` named by ``FILE.py:CALLABLE`` or
  ``package.module:CALLABLE`` (the callable is called with no arguments). This runs the user's
  own code, as any ``import`` does.
* :func:`load_state_dict` reads a checkpoint with ``torch.load(weights_only=True)``: tensors and
  plain containers only, never arbitrary pickled objects. A training checkpoint that keeps the
  weights under ``state_dict`` / ``model_state_dict`` / ``model`` is accepted, and the
  ``module.`` prefix ``DataParallel`` adds is removed.
* :func:`fit_state_dict` loads it into the module, strictly, and says in one line what does
  not fit (missing and unexpected keys, shape mismatches).
* :func:`load_torchscript` reads a TorchScript file onto the CPU.

Every failure is an :class:`registry.export.ExportError` with a one-line message.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.export import ExportError, _require

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "fit_state_dict",
    "is_torchscript",
    "load_architecture",
    "load_state_dict",
    "load_torchscript",
    "one_line",
]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_NAMED = 4
"""Keys named in a message before "and N more"."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMED])
    return shown + (f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else "")


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (it holds ``constants.pkl`` and ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in names) and any(
        "/code/" in n or n.startswith("code/") for n in names
    )


def _module_from_file(path: Path, ref: str) -> Any:
    """Import the Python file at ``path`` as a fresh module (its folder importable meanwhile)."""
    name = f"cidserve_arch_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"--arch {ref}: {path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ExportError(f"--arch {ref}: importing {path} failed: {one_line(exc)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def load_architecture(ref: str) -> nn.Module:
    """The module ``ref`` (``FILE.py:CALLABLE`` or ``package.module:CALLABLE``) builds, in eval
    mode. ``CALLABLE`` (a class or a factory, dotted for a nested attribute) is called with no
    arguments."""
    torch = _require("torch")
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise ExportError(f"--arch {ref!r}: expected FILE.py:CALLABLE or package.module:CALLABLE")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise ExportError(f"--arch {ref}: no such file: {target}")
        module = _module_from_file(path, ref)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ExportError(f"--arch {ref}: cannot import {target}: {one_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ExportError(f"--arch {ref}: {target} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ExportError(f"--arch {ref}: {attr} is not callable")
    try:
        model = obj()
    except Exception as exc:
        raise ExportError(f"--arch {ref}: calling {attr}() failed: {one_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise ExportError(
            f"--arch {ref}: {attr}() returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model.eval()


def _tensors_only(obj: object) -> bool:
    torch = _require("torch")
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _refused_global(exc: BaseException) -> str:
    """The class a ``weights_only`` load refused, from torch's message, if it names one."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f" (found {found.group(1)})" if found else ""


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in the checkpoint at ``path``, read with ``weights_only=True``."""
    torch = _require("torch")
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ExportError(
            f"{path} holds Python objects, not only tensors{_refused_global(exc)}; cidserve "
            "reads weights only: save model.state_dict(), or a TorchScript file"
        ) from None
    except Exception as exc:
        raise ExportError(
            f"{path} cannot be read as a PyTorch checkpoint: {one_line(exc)}"
        ) from None
    if not _tensors_only(obj) and isinstance(obj, Mapping):
        obj = next((obj[k] for k in _WRAPPER_KEYS if _tensors_only(obj.get(k))), obj)
    if not _tensors_only(obj):
        raise ExportError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors)"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly; one line naming what does not fit otherwise."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_few(mismatched)}")
    name = type(model).__name__
    if problems:
        raise ExportError(f"{source} does not fit {name}: {'; '.join(problems)}")
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{source} does not fit {name}: {one_line(exc)}") from None


def load_torchscript(path: Path) -> nn.Module:
    """The TorchScript module at ``path``, on the CPU, in eval mode."""
    torch = _require("torch")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated")
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ExportError(f"{path} cannot be read as TorchScript: {one_line(exc)}") from None
