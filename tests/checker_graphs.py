"""Hand-built ONNX graphs for the checker's tests: one ready FP8 GEMM or attention block, broken one way at a time.

One job: build the graphs (with onnx.helper via onnx_graphs, no binary goldens) that tests/test_checker_*.py
and tests/test_joint_attention.py check. Builder is just enough of a graph builder; gemm_model and
attention_model take a `break_` naming the one thing to get wrong.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnx_graphs

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
FP8 = ml_dtypes.float8_e4m3fn


class Builder:
    """Just enough of a graph builder: nodes in order, unique names, opset 21 / IR 10."""

    def __init__(self):
        self.nodes, self.inits, self.inputs = [], [], []

    def input(self, name, shape, dtype=F16):
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def const(self, array, prefix="c"):
        name = f"{prefix}{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = f"{op_type.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def qdq(self, x, scale=1 / 64, sdtype=np.float16, zp=0.0, zdtype=FP8, **attrs):
        s = self.const(np.array(scale, dtype=sdtype), "scale")
        z = self.const(np.full(np.shape(scale), zp, dtype=zdtype), "zp")
        return self.op("DequantizeLinear", [self.op("QuantizeLinear", [x, s, z], **attrs), s, z],
                       **attrs)

    def fp8_weight(self, shape, sdtype=np.float16):
        w = self.const(np.full(shape, 0.5, dtype=FP8), "w")
        return self.op("DequantizeLinear", [w, self.const(np.array(0.01, dtype=sdtype), "s")])

    def model(self, *outs):
        """A model whose outputs are `outs`; graph output types come from shape inference."""
        m = onnx_graphs.model(self.nodes, self.inputs, [], self.inits, check=False)
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
        m.graph.output.extend(inferred[o] for o in outs)
        if all(i.type.tensor_type.HasField("shape") for i in self.inputs):
            onnx.checker.check_model(m, full_check=True)
        return m


def gemm_model(break_=None):
    """x (1, 8, 64) -> Q/DQ -> MatMul <- DQ <- FP8 weight (64, 32), with one thing broken."""
    b = Builder()
    x = b.input("x", [1, 8, 64])
    if break_ == "a_cast":
        a = b.op("Cast", [b.qdq(x)], to=F16)
    elif break_ == "a_int8":
        a = b.qdq(x, zdtype=np.int8)
    elif break_ == "a_zero_point":
        a = b.qdq(x, zp=1.0)
    elif break_ == "a_per_channel":
        a = b.qdq(x, scale=np.full(64, 1 / 64), axis=-1)
    else:
        a = b.qdq(x)
    if break_ == "b_float":
        w = b.const(np.full((64, 32), 0.5, dtype=np.float16))
    elif break_ == "b_runtime_q":
        w = b.qdq(b.const(np.full((64, 32), 0.5, dtype=np.float16)))
    elif break_ == "b_int8":
        w = b.op("DequantizeLinear", [b.const(np.ones((64, 32), np.int8)),
                                      b.const(np.array(0.01, np.float16))])
    elif break_ == "b_per_channel":  # per-channel FP8 weights are fine
        w = b.op("DequantizeLinear", [b.const(np.ones((64, 32), FP8)),
                                      b.const(np.full(32, 0.01, np.float16))], axis=1)
    elif break_ == "small_n":
        w = b.fp8_weight((64, 8))
    else:
        w = b.fp8_weight((64, 32))
    return b.model(b.op("MatMul", [a, w]))


def attention_model(break_=None, head=32, seq=16, heads=4, shapes=True):
    """Q, K, V (B, H, T, hs) -> FP8 MHA as TensorRT wants it -> FP8 O-projection.

    Batch is symbolic everywhere (dynamic batch is fine); a runtime additive mask sits before
    Softmax (allowed).
    """
    b = Builder()
    shape = ["B", heads, seq, head] if shapes else [None] * 4  # rank only: onnx.checker wants a shape field
    q_in, k_in, v_in = (b.input(n, shape) for n in ("q", "k", "v"))
    mask = b.input("mask", ["B", 1, 1, seq])
    scale = b.const(np.array(head ** -0.5, np.float16))
    q = b.op("Mul", [q_in, scale]) if break_ != "scale_after" else q_in
    q = b.qdq(q) if break_ not in ("q", "float") else q  # "float": the block as fxq leaves it (no FP8 MHA)
    kt = b.op("Transpose", [k_in], perm=[0, 1, 3, 2])  # K^T before its Q/DQ, as ModelOpt does
    kt = b.qdq(kt) if break_ not in ("k", "float") else kt
    s = b.op("MatMul", [q, kt])  # BMM1: (B, H, T, T)
    if break_ == "scale_after":
        s = b.op("Mul", [s, scale])
    if break_ == "div_after":
        s = b.op("Div", [s, b.const(np.array(head ** 0.5, np.float16))])
    if break_ == "cast":
        s = b.op("Cast", [s], to=F16)
    s = b.op("Add", [s, mask])
    if break_ == "fp32_softmax":  # HF eager: softmax(dtype=float32).to(float16)
        p = b.op("Cast", [b.op("Softmax", [b.op("Cast", [s], to=F32)], axis=-1)], to=F16)
    else:
        p = b.op("Softmax", [s], axis=-1)
    if break_ not in ("softmax_q", "float"):
        p = b.qdq(p, scale=1 / 256 if break_ == "softmax_scale" else 1 / 448)
    v = b.qdq(v_in) if break_ not in ("v", "float") else v_in
    o = b.op("MatMul", [p, v])  # BMM2: (B, H, T, hs)
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.const(np.array([0, 0, heads * head], np.int64))])
    o = b.qdq(o) if break_ != "output" else o
    return b.model(b.op("MatMul", [o, b.fp8_weight((heads * head, 64))]))
