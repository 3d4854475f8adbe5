"""Attention: give BMM1 the shape TensorRT's FP8 MHA fusion wants.

fxq already places the scale on Q in torch; these passes make graphs from other paths (or other
tools) match too, without changing what any quantizer computes.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..gs_utils import nodes_of, const_value, new_name, only_consumer, producer, replace_uses, scalar, set_shape


def _activation_qdq(dq: gs.Node | None):
    """(Q, DQ, x) for an activation Q -> DQ pair used only along this edge, else None."""
    if dq is None or dq.op != "DequantizeLinear" or len(dq.outputs[0].outputs) != 1:
        return None
    q = producer(dq.inputs[0], "QuantizeLinear")
    if q is None or len(q.outputs[0].outputs) != 1 or const_value(q.inputs[0]) is not None:
        return None
    if q.inputs[1] is not dq.inputs[1] and scalar(q.inputs[1]) != scalar(dq.inputs[1]):
        return None
    return (q, dq, q.inputs[0]) if scalar(dq.inputs[1]) is not None else None


def _set_scale(graph: gs.Graph, node: gs.Node, value: float) -> None:
    old = const_value(node.inputs[1])
    node.inputs[1] = gs.Constant(new_name(graph, "attn_scale_q"), np.array(value, dtype=old.dtype))


def move_scale_before_q(graph: gs.Graph) -> int:
    """MatMul(DQ(Q(x, s)), K) * c  ==>  MatMul(DQ(Q(x * c, s * c)), K), for a scalar c > 0.

    Scaling the Q/DQ scale with the tensor keeps the FP8 codes exactly those that were
    calibrated: (x*c) / (s*c) = x / s.
    """
    fired = 0
    for mm in nodes_of(graph, "MatMul"):
        scale_op = only_consumer(mm.outputs[0])
        if scale_op is None or scale_op.op not in ("Mul", "Div") or scale_op.inputs[0] is not mm.outputs[0]:
            continue
        c = scalar(scale_op.inputs[1])
        qdq = _activation_qdq(producer(mm.inputs[0]))
        if c is None or not c > 0 or qdq is None:
            continue
        q, dq, x = qdq
        factor = c if scale_op.op == "Mul" else 1.0 / c
        scaled = gs.Variable(new_name(graph, x.name + "_scaled"), dtype=x.dtype, shape=x.shape)
        graph.nodes.append(gs.Node(scale_op.op, new_name(graph, "attn_scale"), inputs=[x, scale_op.inputs[1]],
                                   outputs=[scaled]))
        q.inputs[0] = scaled
        new_scale = float(scalar(q.inputs[1])) * factor
        _set_scale(graph, q, new_scale)
        dq.inputs[1] = q.inputs[1]
        replace_uses(scale_op.outputs[0], mm.outputs[0], graph)
        scale_op.outputs.clear()
        fired += 1
    return fired


def move_transpose_before_qdq(graph: gs.Graph) -> int:
    """x -> Q -> DQ -> Transpose -> MatMul  ==>  x -> Transpose -> Q -> DQ -> MatMul (per-tensor only)."""
    fired = 0
    for tr in nodes_of(graph, "Transpose"):
        reader = only_consumer(tr.outputs[0])
        qdq = _activation_qdq(producer(tr.inputs[0]))
        if reader is None or reader.op not in ("MatMul", "Gemm") or qdq is None:
            continue
        q, dq, x = qdq
        moved = gs.Variable(new_name(graph, x.name + "_t"), dtype=x.dtype, shape=tr.outputs[0].shape)
        graph.nodes.append(gs.Node("Transpose", new_name(graph, tr.name), dict(tr.attrs), [x], [moved]))
        q.inputs[0] = moved
        set_shape(q.outputs[0], tr.outputs[0].shape)
        set_shape(dq.outputs[0], tr.outputs[0].shape)
        replace_uses(tr.outputs[0], dq.outputs[0], graph)
        tr.outputs.clear()
        fired += 1
    return fired
