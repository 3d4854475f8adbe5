"""TensorRT FP8 readiness checker: does each GEMM and attention block meet TensorRT's fusion rules?

Works on any ONNX file (fxq, ModelOpt, plain FP16). The rules (see /work/shared/NOTES.md,
"TensorRT's rules"): constant FP8 weight -> DequantizeLinear -> GEMM, per-tensor activation Q/DQ
directly on every GEMM input, zero points 0, scales in the graph's float dtype; for FP8 MHA, FP8
Q/DQ on Q, K^T and V, the attention scale applied before BMM1, Softmax -> Q(1/448) -> DQ -> BMM2,
Q/DQ on the BMM2 output, head size in [16, 256] and a multiple of 8, static sequence length.

    rep = check_model("model.onnx")
    print(rep.format_table())
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx

from onnx_post.checker_graph import (FLOAT_TYPES, FP8, AttentionBlock, GraphIndex, attr,
                                     dtype_name, find_attention_blocks, module_of, walk_forward)
from onnx_post.checker_numeric import NUMERIC_REASONS, NumericRow, check_external_data, check_numeric

REASONS: dict[str, str] = {
    # GEMM (MatMul / Gemm), both inputs
    "input_a_not_dq": "The GEMM's first input is not produced directly by a DequantizeLinear.",
    "input_b_not_dq": "The GEMM's second input is not produced directly by a DequantizeLinear.",
    "weight_not_fp8_initializer": "A constant weight reaches its DequantizeLinear as something other "
                                  "than an FP8 E4M3 initializer (runtime QuantizeLinear, int8, ...).",
    "scale_dtype_mismatch": "A DequantizeLinear scale's dtype differs from the graph's float dtype "
                            "(TensorRT's strongly typed mode rejects it).",
    "zero_point_nonzero": "A DequantizeLinear zero point is not a constant 0.",
    "activation_not_per_tensor": "An activation DequantizeLinear has a non-scalar (per-channel or "
                                 "blocked) scale; TensorRT wants per-tensor activations.",
    "weight_scale_not_per_channel": "A weight DequantizeLinear's scale is neither per-tensor nor 1-D along the "
                                    "GEMM's output-channel (N) axis, the only per-channel form TensorRT takes.",
    "not_fp8": "A DequantizeLinear's input dtype is not FLOAT8E4M3FN.",
    "small_gemm": "K or N is below 16, so FP8 gains nothing; left unquantized by design.",
    "gemv": "A float GEMM whose rows are only the batch (pooler, classifier on one token): a matrix-vector "
            "product gains nothing from FP8; left unquantized by design.",
    # attention blocks (Softmax between BMM1 = Q@K^T and BMM2 = P@V)
    "q_not_fp8": "BMM1's Q input is not fed directly by a DequantizeLinear of FP8.",
    "k_not_fp8": "BMM1's K^T input is not fed directly by a DequantizeLinear of FP8.",
    "v_not_fp8": "BMM2's V input is not fed directly by a DequantizeLinear of FP8.",
    "softmax_not_quantized": "The Softmax output does not go Softmax -> QuantizeLinear -> "
                             "DequantizeLinear -> BMM2.",
    "softmax_scale_not_1_448": "The Softmax output's QuantizeLinear scale is not 1/448.",
    "scale_after_bmm1": "A constant Mul/Div sits between BMM1 and Softmax; TensorRT wants the "
                        "attention scale applied to Q (or K) before BMM1.",
    "cast_in_block": "A Cast sits inside the attention block (between BMM1 and BMM2, or between "
                     "a Q/DQ and the MatMuls).",
    "head_size_out_of_window": "The head size is outside [16, 256] or not a multiple of 8.",
    "head_size_unknown": "The head size could not be read from the shapes.",
    "dynamic_seq_len": "The sequence dim of Q/K at BMM1 is symbolic; dynamic sequence length may "
                       "prevent FP8 MHA fusion (dynamic batch is fine).",
    "output_not_quantized": "BMM2's output does not reach QuantizeLinear -> DequantizeLinear "
                            "(through Transpose/Reshape) before the next GEMM.",
    # values (onnx_post/checker_numeric.py): structurally fine, numerically broken
    **NUMERIC_REASONS,
}

MIN_GEMM_DIM = 16


class NotOnnxModelError(ValueError):
    """The file parsed as protobuf but holds no ONNX graph (an empty file does that)."""


@dataclass
class GemmRow:
    name: str
    module: str
    ready: bool
    reasons: list[str]
    k: int | None
    n: int | None
    detail: str = ""
    skipped: bool = False  # only reason is small_gemm: not ready, but left out by design


@dataclass
class AttentionRow:
    name: str
    module: str
    ready: bool
    reasons: list[str]
    head_size: int | None
    detail: str = ""


@dataclass
class Readiness:
    gemms: list[GemmRow] = field(default_factory=list)
    attention: list[AttentionRow] = field(default_factory=list)
    graph_dtype: str = "float32"
    casts: int = 0
    numeric: list[NumericRow] = field(default_factory=list)  # bad scales / initializer values
    verify: dict | None = None  # `fxq check --verify`: onnxruntime on random inputs

    @property
    def ready(self) -> bool:
        """Every GEMM ready (or skipped by design), every attention block ready, no numeric problem."""
        return (all(g.ready or g.skipped for g in self.gemms)
                and all(a.ready for a in self.attention) and not self.numeric)

    def summary(self) -> str:
        ready = sum(g.ready for g in self.gemms)
        skipped = sum(g.skipped for g in self.gemms)
        gemm = f"GEMMs: {ready}/{len(self.gemms)} ready (both inputs DQ)"
        if skipped:
            gemm += f", {skipped} skipped (K or N < {MIN_GEMM_DIM}, or GEMV)"
        attn = f"attention: {sum(a.ready for a in self.attention)}/{len(self.attention)} ready"
        numeric = (f" | numeric problems: {len(self.numeric)} ({','.join(sorted({r.reason for r in self.numeric}))})"
                   if self.numeric else "")  # only shown when there are some
        return f"{gemm} | {attn}{numeric} | Casts: {self.casts} | graph dtype: {self.graph_dtype}"

    def format_table(self) -> str:
        gemm_rows = [[_status(g.ready, g.skipped), g.module, g.name, _num(g.k), _num(g.n),
                      ",".join(g.reasons) or "-", g.detail] for g in self.gemms]
        attn_rows = [[_status(a.ready, False), a.module, a.name, _num(a.head_size),
                      ",".join(a.reasons) or "-", a.detail] for a in self.attention]
        parts = [f"GEMMs ({len(self.gemms)})",
                 _table(["status", "module", "node", "K", "N", "reasons", "detail"], gemm_rows),
                 "", f"Attention blocks ({len(self.attention)})",
                 _table(["status", "module", "softmax", "head", "reasons", "detail"], attn_rows),
                 "", f"Numeric problems ({len(self.numeric)})",
                 _table(["reason", "tensor", "node", "detail"],
                        [[r.reason, r.tensor, r.node or "-", r.detail] for r in self.numeric]),
                 "", self.summary()]
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {"ready": self.ready, "summary": self.summary(), "graph_dtype": self.graph_dtype,
                "casts": self.casts,
                "gemms": [dataclasses.asdict(g) for g in self.gemms],
                "attention": [dataclasses.asdict(a) for a in self.attention],
                "numeric": [dataclasses.asdict(r) for r in self.numeric],
                **({"verify": self.verify} if self.verify is not None else {}),
                "reasons": dict(REASONS)}


def check_model(model_or_path: onnx.ModelProto | str | Path) -> Readiness:
    """Check every MatMul/Gemm and every attention block of an ONNX model (or .onnx path)."""
    model, base_dir = _load(model_or_path)
    gi = GraphIndex(model, base_dir)
    fdtype = _graph_dtype(gi)
    gemms = [check_gemm(gi, n, fdtype) for n in gi.nodes if n.op_type in ("MatMul", "Gemm")]
    attention = [check_attention(gi, b) for b in find_attention_blocks(gi)]
    casts = sum(n.op_type == "Cast" for n in gi.nodes)
    return Readiness(gemms, attention, FLOAT_TYPES[fdtype], casts, check_numeric(gi))


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


def check_attention(gi: GraphIndex, blk: AttentionBlock) -> AttentionRow:
    reasons: list[str] = []
    notes: list[str] = []

    def flag(code: str, note: str) -> None:
        if code not in reasons:
            reasons.append(code)
        notes.append(note)

    q, k = blk.bmm1.input[0], blk.bmm1.input[1]
    v = blk.bmm2.input[1 - blk.probs_index]
    for role, name in (("q", q), ("k", k), ("v", v)):
        src = gi.producer.get(name)
        if src is None or src.op_type != "DequantizeLinear" or gi.elem_type(src.input[0]) != FP8:
            flag(f"{role}_not_fp8", f"{role}: from {gi.describe(name)}")
        if src is not None and src.op_type == "Cast":
            flag("cast_in_block", f"{role}: Cast before BMM{1 if role != 'v' else 2}")

    for n in blk.before:
        if n.op_type in ("Mul", "Div"):
            flag("scale_after_bmm1", f"{n.op_type} by a constant between BMM1 and Softmax")
    for n in blk.before + blk.after:
        if n.op_type == "Cast":
            flag("cast_in_block", f"Cast {n.name or '(unnamed)'} between BMM1 and BMM2")

    # Softmax -> QuantizeLinear -> DequantizeLinear -> BMM2, nothing else in between
    if [n.op_type for n in blk.after] != ["QuantizeLinear", "DequantizeLinear"]:
        chain = " -> ".join(["Softmax", *(n.op_type for n in blk.after), "BMM2"])
        flag("softmax_not_quantized", f"probs: {chain}")
    quant = next((n for n in blk.after if n.op_type == "QuantizeLinear"), None)
    if quant is not None:
        scale = gi.value(quant.input[1])
        if scale is None or scale.size != 1:
            flag("softmax_scale_not_1_448", "probs scale not a constant scalar")
        else:  # 1/448 rounded to the scale's dtype: fp16 (or bf16) rounding is fine
            rtol = max(2.0 ** -10, float(ml_dtypes.finfo(scale.dtype).eps))
            if not np.isclose(float(scale.reshape(-1)[0]), 1 / 448, rtol=rtol, atol=0):
                flag("softmax_scale_not_1_448",
                     f"probs scale {float(scale.reshape(-1)[0]):.6g}, want 1/448 = {1 / 448:.6g}")

    head = _first_int(gi.dim(q, -1), gi.dim(k, -2), gi.dim(v, -1))
    if head is None:
        flag("head_size_unknown", "head size: no shape for Q, K or V")
    elif not (16 <= head <= 256 and head % 8 == 0):
        flag("head_size_out_of_window", f"head size {head}")
    seq = [d for d in (gi.dim(q, -2), gi.dim(k, -1)) if isinstance(d, str)]
    if seq:
        flag("dynamic_seq_len", f"sequence dim {seq[0]!r}")

    # BMM2 output -> (Transpose/Reshape) -> QuantizeLinear -> DequantizeLinear
    through = {"Transpose", "Reshape", "Cast", "Identity"}
    quant, path = walk_forward(gi, blk.bmm2.output[0], through, "QuantizeLinear")
    out_q = quant is not None and any(
        c.op_type == "DequantizeLinear" for c in gi.consumers.get(quant.output[0], []))
    if not out_q:
        uses = {c.op_type for c in gi.consumers.get(blk.bmm2.output[0], [])}
        flag("output_not_quantized", f"output: to {','.join(sorted(uses)) or 'graph output'}")
    if any(n.op_type == "Cast" for n in path):
        flag("cast_in_block", "Cast between BMM2 and its output Q/DQ")

    sm = blk.softmax
    return AttentionRow(sm.name, module_of(sm), not reasons, reasons, head, "; ".join(notes))


def _first_int(*dims):
    return next((d for d in dims if isinstance(d, int)), None)


def _graph_dtype(gi: GraphIndex) -> int:
    """The float dtype most GEMMs compute in (else most float tensors): what scales must match."""
    votes = [gi.elem_type(n.output[0]) for n in gi.nodes if n.op_type in ("MatMul", "Gemm")]
    votes = [t for t in votes if t in FLOAT_TYPES]
    if not votes:
        names = [*gi.types, *gi.inits]
        votes = [t for t in map(gi.elem_type, names) if t in FLOAT_TYPES]
    return max(set(votes), key=votes.count) if votes else onnx.TensorProto.FLOAT


def _load(model_or_path) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, ""
    path = Path(model_or_path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    # External weights stay on disk; the few small tensors we read (scales, zero points) are
    # loaded on demand from base_dir.
    model = onnx.load(str(path), load_external_data=False)
    if not model.HasField("graph") and not model.opset_import:
        raise NotOnnxModelError(f"{path} holds no ONNX graph")
    check_external_data(model, str(path.parent))  # a truncated .data is an I/O error, not a graph finding
    return model, str(path.parent)


def _status(ready: bool, skipped: bool) -> str:
    return "ready" if ready else ("skipped" if skipped else "NOT READY")


def _num(x: int | None) -> str:
    return "?" if x is None else str(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)
