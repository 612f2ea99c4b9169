"""Small real ONNX models built with onnx.helper, for cache, eviction and memory tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_model(path: Path, *, n_in: int = 8, n_out: int = 4, seed: int = 0) -> Path:
    """``y = x @ W + b`` with seeded weights; input ``x`` [batch, n_in], output ``y``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        f"linear_{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def linear_weights(seed: int, n_in: int = 8, n_out: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n_in, n_out)).astype(np.float32),
        rng.standard_normal(n_out).astype(np.float32),
    )


def slow_model(path: Path, *, width: int = 1024, rows: int = 256, depth: int = 400) -> Path:
    """One request ``x [1, width]`` expanded to ``[rows, width]`` and pushed through ``depth``
    chained ``MatMul``s: a model whose single run takes long enough (about a second here) to
    test deadlines deterministically. Output ``y [1, width]`` (mean over the rows)."""
    w = (np.eye(width, dtype=np.float32) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Expand", ["x", "rows_shape"], ["h_in"])]
    prev = "h_in"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("ReduceMean", [prev], ["y"], axes=[0], keepdims=1))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array([rows, width], dtype=np.int64), "rows_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
