"""Weights: FP8 initializers feeding DequantizeLinear, pre-transposed so DQ feeds the GEMM."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from .. import fp8
from ..gs_utils import (const_value, is_zero_point_zero, new_name, nodes_of, only_consumer, replace_uses, set_input,
                        set_shape, transposed)


FLOAT_WEIGHTS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)}


def fold_weight_quantize(graph: gs.Graph) -> int:
    """Constant W -> QuantizeLinear -> DequantizeLinear  ==>  FP8 initializer -> DequantizeLinear.

    Halves the file and leaves TensorRT a constant FP8 weight, as its GEMM fusion requires.
    """
    fired = 0
    for q in nodes_of(graph, "QuantizeLinear"):
        w = const_value(q.inputs[0])
        scale = const_value(q.inputs[1])
        if w is None or scale is None or w.dtype not in FLOAT_WEIGHTS or not is_zero_point_zero(q):
            continue
        if q.attrs.get("saturate", 1) != 1 or len(q.inputs) < 3 or "float8" not in str(const_value(q.inputs[2]).dtype):
            continue
        axis = q.attrs.get("axis", 1)
        s = scale if scale.size == 1 else np.expand_dims(scale, tuple(i for i in range(w.ndim) if i != axis % w.ndim))
        codes = gs.Constant(new_name(graph, q.inputs[0].name + "_fp8"), fp8.quantize(w, s))
        out = q.outputs[0]
        for dq in list(out.outputs):
            dq.inputs[0] = codes
        q.outputs.clear()
        fired += 1
    return fired


def _transposable_scale(dq: gs.Node, w: gs.Constant) -> bool:
    """Per-tensor, or per-channel along one axis of the 2-D weight (a 1-D scale); blocked scales are not."""
    scale = const_value(dq.inputs[1])
    if scale is None or dq.attrs.get("block_size", 0):
        return False
    return scale.size == 1 or (scale.ndim == 1 and scale.size == w.shape[dq.attrs.get("axis", 1) % 2])


def pretranspose_weights(graph: gs.Graph) -> int:
    """FP8 W -> DQ -> Transpose -> MatMul  ==>  FP8 W^T -> DQ -> MatMul (and Gemm transB=1 -> 0).

    A per-channel DQ keeps its channels: its axis moves with the transpose (0 for W[N, K] -> 1 for W^T).
    """
    fired = 0
    for dq in nodes_of(graph, "DequantizeLinear"):
        w = dq.inputs[0]
        if not isinstance(w, gs.Constant) or len(w.shape) != 2 or not _transposable_scale(dq, w):
            continue
        out = dq.outputs[0]
        user = only_consumer(out)
        if user is None:
            continue
        if user.op == "Transpose" and list(user.attrs.get("perm", [1, 0])) == [1, 0]:
            target = user.outputs[0]
        elif user.op == "Gemm" and user.attrs.get("transB", 0) == 1 and user.inputs[1] is out:
            target = None
        else:
            continue
        wt = gs.Constant(new_name(graph, w.name + "_t"), transposed(w))
        dq.inputs[0] = wt
        if const_value(dq.inputs[1]).size != 1:
            dq.attrs["axis"] = 1 - dq.attrs.get("axis", 1) % 2
        set_shape(out, wt.shape)
        if target is None:
            user.attrs["transB"] = 0
        else:
            # The DQ now yields W^T directly: its readers take over the Transpose's readers.
            replace_uses(target, out, graph)
            user.outputs.clear()
        fired += 1
    return fired


def unshare_weight_dq(graph: gs.Graph) -> int:
    """Give each GEMM its own weight DequantizeLinear, so pre-transposing one cannot affect another."""
    fired = 0
    for dq in [n for n in nodes_of(graph, "DequantizeLinear") if isinstance(n.inputs[0], gs.Constant)]:
        readers = list(dq.outputs[0].outputs)
        for reader in readers[1:]:
            out = gs.Variable(new_name(graph, dq.outputs[0].name), dtype=dq.outputs[0].dtype, shape=dq.outputs[0].shape)
            graph.nodes.append(gs.Node("DequantizeLinear", new_name(graph, dq.name), dict(dq.attrs),
                                       list(dq.inputs), [out]))
            set_input(reader, dq.outputs[0], out)
            fired += 1
    return fired


