"""An FP32 copy of a BF16 ONNX graph, for checking its numbers in onnxruntime.

onnxruntime's CPU provider has no BF16 DequantizeLinear (nor many other BF16 kernels), so a BF16
file cannot run there as it is. The copy turns every BF16 tensor, type and Cast into FP32; FP8
codes, integers and the graph's structure stay as they are. BF16 -> FP32 is exact, so the copy's
FP8 scales and weights are the file's own; only the arithmetic between the Q/DQ pairs is wider.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

BF16, FP32 = TensorProto.BFLOAT16, TensorProto.FLOAT
_DTYPE_ATTRS = ("to", "dtype", "output_dtype")  # Cast(to), EyeLike/Random*(dtype), QuantizeLinear(output_dtype)


def has_bf16(model: onnx.ModelProto) -> bool:
    g = model.graph
    return any(t.data_type == BF16 for t in g.initializer) or \
        any(v.type.tensor_type.elem_type == BF16 for v in [*g.input, *g.output])


def _tensor(t: TensorProto) -> bool:
    """BF16 tensor proto -> FP32 in place; True if it changed."""
    if t.data_type != BF16:
        return False
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    return True


def upcast_bf16(model: onnx.ModelProto) -> int:
    """Every BF16 initializer, value type, constant and dtype attribute in `model` as FP32 (in place).
    Returns how many were changed."""
    g = model.graph
    changed = sum(_tensor(t) for t in g.initializer)
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.tensor_type.elem_type == BF16:
            v.type.tensor_type.elem_type = FP32
            changed += 1
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                changed += _tensor(a.t)
            elif a.type == onnx.AttributeProto.INT and a.name in _DTYPE_ATTRS and a.i == BF16:
                a.i = FP32
                changed += 1
            elif a.type == onnx.AttributeProto.GRAPH:
                raise ValueError(f"node {node.name} ({node.op_type}) has a subgraph; fxq's BF16 upcast handles "
                                 "flat graphs only (what fxq exports)")
    return changed
