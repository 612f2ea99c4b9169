"""Hostile ONNX models built with ``onnx.helper``: a few hundred bytes each, costly to load."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def endless_loop_model(path: Path) -> Path:
    """``y = x`` after a ``Loop`` of 2^62 iterations: a warm-up that never ends by itself."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 1]),
        ],
    )
    nodes = [
        helper.make_node(
            "Constant", [], ["M"], value=helper.make_tensor("m", TensorProto.INT64, [], [2**62])
        ),
        helper.make_node(
            "Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])
        ),
        helper.make_node("Loop", ["M", "c", "x"], ["y"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
    )
    return _save(graph, path)


def constant_of_shape_model(path: Path, elements: int, *, keep: bool = False) -> Path:
    """A ``ConstantOfShape`` of ``elements`` floats (4 bytes each) that ONNX Runtime folds into
    a constant while it builds the session. ``keep=False``: summed to a scalar added to ``x``
    (memory only while building); ``keep=True``: multiplied by ``x`` at run time, so the
    folded tensor stays in the session (a model that really holds ``4 * elements`` bytes)."""
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=value)]
    if keep:
        nodes += [
            helper.make_node("Mul", ["big", "x"], ["scaled"]),
            helper.make_node("ReduceSum", ["scaled"], ["s"], keepdims=0),
            helper.make_node("Reshape", ["s", "one"], ["y"]),
        ]
    else:
        nodes += [
            helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        f"constant_{elements}_{int(keep)}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [
            helper.make_tensor("shape", TensorProto.INT64, [1], [elements]),
            helper.make_tensor("one", TensorProto.INT64, [2], [1, 1]),
        ],
    )
    return _save(graph, path)
