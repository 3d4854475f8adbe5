"""TensorRT FP8 readiness checker: does each GEMM, conv and attention block meet TensorRT's fusion rules?

Works on any ONNX file (fxq, ModelOpt, plain FP16). The rules (see /work/shared/NOTES.md,
"TensorRT's rules"): constant FP8 weight -> DequantizeLinear -> GEMM, per-tensor activation Q/DQ
directly on every GEMM input, zero points 0, scales in the graph's float dtype; for FP8 MHA, FP8
Q/DQ on Q, K^T and V, the attention scale applied before BMM1, Softmax -> Q(1/448) -> DQ -> BMM2,
Q/DQ on the BMM2 output, head size in [16, 256] and a multiple of 8, static sequence length.

    rep = check_model("model.onnx")
    print(rep.format_table())
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnx_post.checker_attention import check_attention
from onnx_post.checker_conv import check_conv
from onnx_post.checker_graph import (FLOAT_TYPES, FP8, GraphIndex, attr, dtype_name, find_attention_blocks,
                                     function_models, module_of)
from onnx_post.checker_load import InvalidModelError, NotOnnxModelError, UnloadableFileError, load_model  # noqa: F401
from onnx_post.checker_numeric import check_numeric
from onnx_post.checker_report import MIN_GEMM_DIM, REASONS, AttentionRow, ConvRow, GemmRow, Readiness  # noqa: F401
from onnx_post.runtime import WRONG_ON_FP8


def check_model(model_or_path: onnx.ModelProto | str | Path) -> Readiness:
    """Check every MatMul/Gemm, Conv and attention block of an ONNX model (or .onnx path).

    GEMMs and attention inside If/Loop/Scan bodies and model-local functions are checked too. A
    file onnx.checker rejects raises InvalidModelError (checker_load.py says what else is refused).
    """
    model, base_dir = load_model(model_or_path)
    gi = GraphIndex(model, base_dir)
    fdtype = _graph_dtype(gi)
    indexes = [gi, *(GraphIndex(f, base_dir) for f in function_models(model))]
    blocks = [(x, b) for x in indexes for b in find_attention_blocks(x)]
    attention = [check_attention(x, b) for x, b in blocks]
    # The two BMMs of a block left in float by design are skipped with it, not GEMMs that failed.
    float_bmms = {id(n) for (_, b), row in zip(blocks, attention) if row.skipped for n in (b.bmm1, b.bmm2)}
    gemms = [_float_bmm(x, n) if id(n) in float_bmms else check_gemm(x, n, fdtype)
             for x in indexes for n in x.nodes if n.op_type in ("MatMul", "Gemm")]
    convs = [check_conv(x, n, fdtype, _check_gemm_input) for x in indexes for n in x.nodes if n.op_type == "Conv"]
    casts = sum(n.op_type == "Cast" for x in indexes for n in x.nodes)
    numeric = [r for x in indexes for r in check_numeric(x)]
    return Readiness(gemms, attention, FLOAT_TYPES[fdtype], casts, numeric, notes=runtime_notes(indexes), convs=convs)


def runtime_notes(indexes: list[GraphIndex]) -> list[str]:
    """onnxruntime pitfalls of this file, each miscomputed by a default session (onnx_post/runtime.py says how)."""
    fix = (f"run this file in onnxruntime with InferenceSession(..., disabled_optimizers={WRONG_ON_FP8!r}) "
           "(fxq and --verify do)")
    notes = []
    relu_q = sum(any(c.op_type == "QuantizeLinear" for c in x.consumers.get(n.output[0], []))
                 for x in indexes for n in x.nodes if n.op_type == "Relu")
    if relu_q:
        notes.append(f"{relu_q} Relu -> QuantizeLinear: onnxruntime's ReluQuantRewrite drops the Relu, which is wrong "
                     f"for signed FP8; {fix}")
    biased = sum(_bias_rewritten(x, n) for x in indexes for n in x.nodes)
    if biased:
        notes.append(f"{biased} Conv/ConvTranspose/Gemm with a bias on a path to a QuantizeLinear: onnxruntime's "
                     f"WeightBiasQuantization rewrites the bias as int32 at x_scale * w_scale; at FP8 scales bias / "
                     f"(x_scale * w_scale) overflows float16 in FP16 graphs (and int32 for large biases), and the "
                     f"bias comes back wrong; {fix}")
    return notes


def _bias_rewritten(gi: GraphIndex, node: onnx.NodeProto) -> bool:
    """What onnxruntime's WeightBiasQuantization matches: a Conv, ConvTranspose or Gemm with a bias whose input
    comes from a DequantizeLinear and whose output leads, through Relu/Clip nodes with one reader each, to a
    QuantizeLinear."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return False
    if getattr(gi.producer.get(node.input[0]), "op_type", None) != "DequantizeLinear":
        return False
    out = node.output[0]
    while len(readers := gi.consumers.get(out, [])) == 1:
        if readers[0].op_type == "QuantizeLinear":
            return True
        if readers[0].op_type not in ("Relu", "Clip"):
            return False
        out = readers[0].output[0]
    return False


def _float_bmm(gi: GraphIndex, node: onnx.NodeProto) -> GemmRow:
    return GemmRow(node.name, module_of(node), False, ["head_size_out_of_window"], *_gemm_kn(gi, node),
                   "BMM of an attention block left in float by design", skipped=True)


def check_gemm(gi: GraphIndex, node: onnx.NodeProto, fdtype: int) -> GemmRow:
    reasons: list[str] = []
    notes: list[str] = []
    for side, name in zip("ab", node.input[:2]):
        r, d = _check_gemm_input(gi, name, side, fdtype, _output_channel_axis(gi, node) if side == "b" else None)
        reasons += [x for x in r if x not in reasons]
        notes += d
    k, n = _gemm_kn(gi, node)
    if (k is not None and k < MIN_GEMM_DIM) or (n is not None and n < MIN_GEMM_DIM):
        reasons.append("small_gemm")
    if reasons and set(reasons) <= {"input_a_not_dq", "input_b_not_dq"} and _is_gemv(gi.shape(node.input[0])):
        reasons, notes = ["gemv"], [f"a: shape {gi.shape(node.input[0])}"]
    return GemmRow(node.name, module_of(node), not reasons, reasons, k, n, "; ".join(notes),
                   skipped=reasons in (["small_gemm"], ["gemv"]))


def _is_gemv(shape) -> bool:
    """Rows = the batch alone: [batch, (1, ...,) K] with a symbolic or small batch dim."""
    if shape is None or len(shape) < 2 or any(d != 1 for d in shape[1:-1]):
        return False
    b = shape[0]
    return (isinstance(b, str) and b.isidentifier()) or (isinstance(b, int) and b < MIN_GEMM_DIM)


def _output_channel_axis(gi: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The axis of the 2-D B input that indexes output channels (N), else None."""
    shape = gi.shape(node.input[1])
    if shape is None or len(shape) != 2:
        return None
    return 0 if node.op_type == "Gemm" and attr(node, "transB", 0) else 1


def _check_gemm_input(gi: GraphIndex, name: str, side: str, fdtype: int, out_axis: int | None = None):
    dq = gi.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return [f"input_{side}_not_dq"], [f"{side}: from {gi.describe(name)}"]
    reasons, notes = [], []
    x, scale = dq.input[0], dq.input[1]
    zp = dq.input[2] if len(dq.input) > 2 else ""
    x_type = gi.elem_type(x)
    if x_type != FP8:
        reasons.append("not_fp8")
        notes.append(f"{side}: DQ of {dtype_name(x_type)}")
    if gi.is_const(x):  # a weight: must be stored as FP8, not quantized at runtime
        stored = x in gi.inits or gi.describe(x) == "Constant"
        if not stored or x_type != FP8:
            reasons.append("weight_not_fp8_initializer")
            notes.append(f"{side}: weight from {gi.describe(x)}")
        scale_shape = gi.shape(scale)
        if gi.numel(scale) != 1 and not (out_axis is not None and scale_shape is not None and len(scale_shape) == 1
                                         and attr(dq, "axis", 1) % 2 == out_axis and not attr(dq, "block_size", 0)):
            reasons.append("weight_scale_not_per_channel")
            notes.append(f"{side}: weight scale shape {scale_shape}, axis {attr(dq, 'axis', 1)}")
    elif gi.numel(scale) != 1 or attr(dq, "block_size", 0):
        reasons.append("activation_not_per_tensor")
        notes.append(f"{side}: scale shape {gi.shape(scale)}")
    s_type = gi.elem_type(scale)
    if s_type != fdtype:
        reasons.append("scale_dtype_mismatch")
        notes.append(f"{side}: scale {dtype_name(s_type)}, graph {dtype_name(fdtype)}")
    if zp:
        v = gi.value(zp)
        if v is None or np.any(v.astype(np.float32) != 0):
            reasons.append("zero_point_nonzero")
            notes.append(f"{side}: zero point " + ("not constant" if v is None else "nonzero"))
    return reasons, notes


def _gemm_kn(gi: GraphIndex, node: onnx.NodeProto) -> tuple[int | None, int | None]:
    a, b = node.input[0], node.input[1]
    if node.op_type == "Gemm":
        k = gi.dim(a, 0 if attr(node, "transA", 0) else 1)
        n = gi.dim(b, 0 if attr(node, "transB", 0) else 1)
    else:
        b_shape = gi.shape(b)
        k = gi.dim(a, -1)
        n = 1 if b_shape is not None and len(b_shape) == 1 else gi.dim(b, -1)
    return (k if isinstance(k, int) else None), (n if isinstance(n, int) else None)


def _graph_dtype(gi: GraphIndex) -> int:
    """The float dtype most GEMMs compute in (else most float tensors): what scales must match."""
    votes = [gi.elem_type(n.output[0]) for n in gi.nodes if n.op_type in ("MatMul", "Gemm", "Conv")]
    votes = [t for t in votes if t in FLOAT_TYPES]
    if not votes:
        names = [*gi.types, *gi.inits]
        votes = [t for t in map(gi.elem_type, names) if t in FLOAT_TYPES]
    return max(set(votes), key=votes.count) if votes else onnx.TensorProto.FLOAT
