"""The warm-up run: zero inputs of the declared shapes, under a deadline.

Light on imports (numpy and onnxruntime only): the trial build's child process
(``services.runtime.probe_child``) uses it too, and pays for every import on each cold load.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import onnxruntime as ort

from services.runtime.errors import WarmupTimeout

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def warmup_feeds(
    session: ort.InferenceSession, shapes: dict[str, list[int]] | None = None
) -> dict[str, np.ndarray]:
    """Zero inputs (empty strings for string inputs) of the declared shapes for a warm-up run.

    ``shapes`` gives concrete shapes for some inputs (what the model's preprocessor will feed
    them, e.g. an image model's height and width); every other dynamic dimension is 1.
    """
    given = shapes or {}
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        shape = given.get(inp.name) or [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if inp.type == "tensor(string)":
            feeds[inp.name] = np.full(shape, "", dtype=object)  # empty strings
            continue
        dtype = _ORT_TO_NUMPY.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has unsupported type {inp.type}")
        feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def warm_up(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], timeout_s: float
) -> dict[str, np.ndarray]:
    """One run in the calling thread, terminated (``RunOptions.terminate``) from a timer
    thread when ``timeout_s`` passes: a model whose warm-up never ends (a ``Loop`` of 2^62
    iterations) frees its thread within milliseconds of the deadline.

    Raises :class:`WarmupTimeout` naming the deadline.
    """
    run_options = ort.RunOptions()
    timer = threading.Timer(timeout_s, _terminate, (run_options,))
    timer.daemon = True
    t0 = time.monotonic()
    timer.start()
    try:
        values = session.run(None, feeds, run_options)
    except Exception:
        if run_options.terminate:
            raise WarmupTimeout(
                f"the warm-up run did not finish within {timeout_s * 1000:.0f} ms "
                "(CIDSERVE_WARMUP_TIMEOUT_MS) and was terminated"
            ) from None
        raise
    finally:
        timer.cancel()
    if run_options.terminate and time.monotonic() - t0 >= timeout_s:
        raise WarmupTimeout(
            f"the warm-up run did not finish within {timeout_s * 1000:.0f} ms "
            "(CIDSERVE_WARMUP_TIMEOUT_MS)"
        )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, values, strict=True))


def _terminate(run_options: ort.RunOptions) -> None:
    run_options.terminate = True
