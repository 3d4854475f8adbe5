"""Remove additive attention masks that are provably all zero (transformers 5.x ViT builds one).

An all-zero mask Add does nothing numerically, but it sits between BMM1 and Softmax and keeps
tools (ModelOpt's exporter among them) from seeing the attention pattern.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..gs_utils import nodes_of, const_value, producer, replace_uses

_PASS_THROUGH = {"Expand", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Identity", "Flatten"}


def _all(t: gs.Tensor, pred, depth: int = 8) -> bool:
    """True when every element of `t` provably satisfies pred (a numpy predicate on constants)."""
    v = const_value(t)
    if v is not None:
        return v.size > 0 and bool(np.all(pred(v)))
    node = producer(t)
    if node is None or depth == 0:
        return False
    if node.op in _PASS_THROUGH:
        return _all(node.inputs[0], pred, depth - 1)
    if node.op == "Where":
        cond, a, b = node.inputs
        return (_all(a, pred, depth - 1) and _all(b, pred, depth - 1)) or \
            (_all(cond, lambda c: c.astype(bool), depth - 1) and _all(a, pred, depth - 1)) or \
            (_all(cond, lambda c: ~c.astype(bool), depth - 1) and _all(b, pred, depth - 1))
    return False


def _is_zero(t: gs.Tensor) -> bool:
    return _all(t, lambda v: v.astype(np.float64) == 0)


def _rank(t: gs.Tensor) -> int | None:
    return len(t.shape) if t.shape is not None else None


def remove_zero_masks(graph: gs.Graph) -> int:
    fired = 0
    for add in nodes_of(graph, "Add"):
        for keep, mask in ((0, 1), (1, 0)):
            x, m = add.inputs[keep], add.inputs[mask]
            # Only where dropping the Add cannot change the output's shape by broadcasting.
            if _rank(x) is None or _rank(m) is None or _rank(m) > _rank(x) or not _is_zero(m):
                continue
            if add.outputs[0].shape is not None and x.shape is not None and list(add.outputs[0].shape) != list(x.shape):
                continue
            replace_uses(add.outputs[0], x, graph)
            add.outputs.clear()
            fired += 1
            break
    return fired
