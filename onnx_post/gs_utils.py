"""Shared helpers for the onnx-graphsurgeon passes: reading producers, FP8 constants, rewiring."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .pending import PendingValues, transpose


def nodes_of(graph: gs.Graph, op: str) -> list[gs.Node]:
    """Nodes of one op type that are still wired in (a pass may have detached some this round)."""
    return [n for n in graph.nodes if n.op == op and n.outputs]


def producer(t: gs.Tensor, op: str | None = None) -> gs.Node | None:
    if not t.inputs:
        return None
    node = t.inputs[0]
    return node if op is None or node.op == op else None


def only_consumer(t: gs.Tensor) -> gs.Node | None:
    return t.outputs[0] if len(t.outputs) == 1 else None


def _constant_array(c: gs.Constant) -> np.ndarray:
    if isinstance(c._values, PendingValues):  # a weight not written yet: made from its source now
        return c._values.load()
    # graphsurgeon casts FP8 constants to float when .values is read; read the proto instead.
    tensor = getattr(c._values, "tensor", None)
    if tensor is not None:
        return onnx.numpy_helper.to_array(tensor)
    return np.asarray(c.values)


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """Value of an initializer, or of a Constant node's output."""
    if isinstance(t, gs.Constant):
        return _constant_array(t)
    node = producer(t, "Constant")
    if node is not None and "value" in node.attrs:
        v = node.attrs["value"]
        return _constant_array(v) if isinstance(v, gs.Constant) else None
    return None


def transposed(c: gs.Constant) -> np.ndarray | PendingValues:
    """W^T of a 2-D constant; a weight not written yet stays unwritten (transposed when it is)."""
    if isinstance(c._values, PendingValues):
        return c._values.transposed()
    return transpose(const_value(c))


def scalar(t: gs.Tensor) -> float | None:
    v = const_value(t)
    return float(v.reshape(())) if v is not None and v.size == 1 else None


def is_zero_point_zero(node: gs.Node) -> bool:
    if len(node.inputs) < 3:
        return True
    v = const_value(node.inputs[2])
    return v is not None and not np.any(v.astype(np.float32))


def scale_like(value: float, like: np.ndarray | gs.Tensor) -> np.ndarray:
    """A scalar scale in the dtype of an existing scale constant."""
    dtype = like.dtype if isinstance(like, np.ndarray) else np.asarray(const_value(like)).dtype
    return np.array(value, dtype=dtype)


def replace_uses(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph) -> None:
    """Make every reader of `old` (nodes and graph outputs) read `new` instead."""
    for node in list(old.outputs):
        set_input(node, old, new)
    graph.outputs = [new if t is old else t for t in graph.outputs]


_names = itertools.count(1)


def set_shape(var: gs.Variable, shape) -> None:
    """Update a tensor's recorded shape; a shape without a dtype would be an invalid value_info."""
    var.shape = list(shape) if shape is not None and var.dtype is not None else None


def new_name(graph: gs.Graph, base: str) -> str:
    """A tensor/node name that cannot clash with the exporter's (graph kept for call symmetry)."""
    return f"{base}__fxq{next(_names)}"


def set_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Replace `old` by `new` among node's inputs (graphsurgeon lists take item assignment only)."""
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new
