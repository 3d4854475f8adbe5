"""Casts: none between a Q/DQ and its neighbours, no FP32 islands in an FP16/BF16 graph."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..gs_utils import nodes_of, only_consumer, replace_uses

_FLOAT_ROUND_TRIP_OPS = {"Softmax"}  # ops that run natively in the graph dtype in TensorRT


def _cast_to(node: gs.Node) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))


def remove_noop_casts(graph: gs.Graph) -> int:
    """Cast to the dtype its input already has."""
    fired = 0
    for cast in nodes_of(graph, "Cast"):
        src = cast.inputs[0]
        if src.dtype is not None and src.dtype == _cast_to(cast):
            replace_uses(cast.outputs[0], src, graph)
            cast.outputs.clear()
            fired += 1
    return fired


# (narrow, wide): every value of `narrow` is exact in `wide`, so narrow -> wide -> narrow is the identity.
_WIDENINGS = {(np.dtype(np.float16), np.dtype(np.float32)), (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)),
              (np.dtype(np.float16), np.dtype(np.float64)), (np.dtype(np.float32), np.dtype(np.float64))}


def remove_widening_round_trips(graph: gs.Graph) -> int:
    """x(f16) -> Cast(f32) -> Cast(f16)  ==>  x. Exact: f32 holds every f16 value (not so the other way)."""
    fired = 0
    for up in nodes_of(graph, "Cast"):
        if not up.outputs:
            continue
        down = only_consumer(up.outputs[0])
        src = up.inputs[0]
        if down is None or down.op != "Cast" or src.dtype is None or up.outputs[0] in graph.outputs:
            continue
        if _cast_to(down) != src.dtype or (np.dtype(src.dtype), _cast_to(up)) not in _WIDENINGS:
            continue
        replace_uses(down.outputs[0], src, graph)
        up.outputs.clear()
        down.outputs.clear()
        fired += 1
    return fired


def fold_cast_round_trips(graph: gs.Graph) -> int:
    """Cast(f16->f32) -> Softmax -> Cast(f32->f16)  ==>  Softmax in f16 (what HF's upcast becomes)."""
    fired = 0
    for up in nodes_of(graph, "Cast"):
        if not up.outputs:  # detached earlier in this loop
            continue
        op = only_consumer(up.outputs[0])
        if op is None or op.op not in _FLOAT_ROUND_TRIP_OPS:
            continue
        down = only_consumer(op.outputs[0])
        src = up.inputs[0]
        if down is None or down.op != "Cast" or src.dtype is None or _cast_to(down) != src.dtype:
            continue
        op.inputs[0] = src
        op.outputs[0].dtype = src.dtype
        replace_uses(down.outputs[0], op.outputs[0], graph)
        up.outputs.clear()
        down.outputs.clear()
        fired += 1
    return fired


