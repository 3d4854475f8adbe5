"""The checker's report: one row per GEMM and attention block, numeric problems, notes; as a table or JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from onnx_post.checker_numeric import NUMERIC_REASONS, NumericRow

MIN_GEMM_DIM = 16  # K or N below this: FP8 gains nothing, the GEMM is skipped by design

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
    # convolutions (onnx_post/checker_conv.py); the scale and zero-point reasons above apply too
    "conv_input_not_dq": "The Conv's input is not produced directly by a per-tensor FP8 DequantizeLinear "
                         "(Q -> DQ -> Conv, no Cast in between).",
    "conv_weight_not_fp8_initializer": "The Conv's weight is not an FP8 E4M3 initializer read through a "
                                       "DequantizeLinear (a float weight, or one quantized at runtime).",
    "conv_bias_dtype_mismatch": "The Conv's bias is not in the graph's float dtype.",
    "conv_grouped": "A grouped or depthwise Conv (group > 1): TensorRT has no FP8 kernel for it. With no FP8 "
                    "on it it is skipped (float by design); with FP8 on it, not ready.",
    "conv_channels_not_16": "The Conv's input or output channels are not a multiple of 16 (an RGB stem, a "
                            "4-channel latent): skipped without FP8 on it, not ready with.",
    "conv_kernel_too_large": "The Conv's filter has more than 32 taps (7x7): TensorRT has no FP8 kernel for it; "
                             "skipped without FP8 on it, not ready with.",
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
    "head_size_out_of_window": "The head size is outside [16, 256] or not a multiple of 8. A block with no FP8 in "
                               "it is skipped (float by design, as fxq leaves it); one with FP8 is not ready.",
    "head_size_unknown": "The head size could not be read from the shapes.",
    "dynamic_seq_len": "The sequence dim of Q/K at BMM1 is symbolic; dynamic sequence length may "
                       "prevent FP8 MHA fusion (dynamic batch is fine).",
    "output_not_quantized": "BMM2's output does not reach QuantizeLinear -> DequantizeLinear on every branch "
                            "(through Transpose/Reshape, a Split/Slice into token ranges or a Concat) before the "
                            "next GEMM.",
    "output_scales_differ": "BMM2's output is split into branches (a joint text+image attention) whose "
                            "QuantizeLinear scales differ; the block's output is one Q/DQ, as TensorRT's FP8 MHA "
                            "pattern wants, only where they are equal (fxq ties them).",
    # values (onnx_post/checker_numeric.py): structurally fine, numerically broken
    **NUMERIC_REASONS,
}


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
    skipped: bool = False  # float by design: no FP8 in the block and a head size outside TensorRT's window


@dataclass
class ConvRow:
    name: str
    module: str
    ready: bool
    reasons: list[str]
    in_channels: int | None
    out_channels: int | None
    group: int
    kernel: str  # "3x3"
    detail: str = ""
    skipped: bool = False  # float by design (grouped, channels, filter size) and no FP8 on it


@dataclass
class Readiness:
    gemms: list[GemmRow] = field(default_factory=list)
    attention: list[AttentionRow] = field(default_factory=list)
    graph_dtype: str = "float32"
    casts: int = 0
    numeric: list[NumericRow] = field(default_factory=list)  # bad scales / initializer values
    verify: dict | None = None  # `fxq check --verify`: onnxruntime on random inputs
    notes: list[str] = field(default_factory=list)  # advice that is not a readiness failure (onnxruntime pitfalls)
    convs: list[ConvRow] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Every GEMM, conv and attention block ready (or skipped by design), no numeric problem."""
        return (all(g.ready or g.skipped for g in self.gemms) and all(c.ready or c.skipped for c in self.convs)
                and all(a.ready or a.skipped for a in self.attention) and not self.numeric)

    def summary(self) -> str:
        ready = sum(g.ready for g in self.gemms)
        skipped = sum(g.skipped for g in self.gemms)
        gemm = f"GEMMs: {ready}/{len(self.gemms)} ready (both inputs DQ)"
        if skipped:
            why = f"K or N < {MIN_GEMM_DIM}, or GEMV"
            if any(g.skipped and g.reasons == ["head_size_out_of_window"] for g in self.gemms):
                why = f"K or N < {MIN_GEMM_DIM}, GEMV, or BMM of a float attention block"
            gemm += f", {skipped} skipped ({why})"
        attn = f"attention: {sum(a.ready for a in self.attention)}/{len(self.attention)} ready"
        attn_skipped = sum(a.skipped for a in self.attention)
        if attn_skipped:
            attn += f", {attn_skipped} skipped (float by design: head size outside [16, 256] or not a multiple of 8)"
        conv = f"convs: {sum(c.ready for c in self.convs)}/{len(self.convs)} ready (input and weight DQ)"
        conv_skipped = sum(c.skipped for c in self.convs)
        if conv_skipped:
            conv += f", {conv_skipped} skipped (float by design: grouped, channels not multiples of 16, or filter > 32)"
        numeric = (f" | numeric problems: {len(self.numeric)} ({','.join(sorted({r.reason for r in self.numeric}))})"
                   if self.numeric else "")  # only shown when there are some
        return f"{gemm} | {attn} | {conv}{numeric} | Casts: {self.casts} | graph dtype: {self.graph_dtype}"

    def format_table(self) -> str:
        gemm_rows = [[_status(g.ready, g.skipped), g.module, g.name, _num(g.k), _num(g.n),
                      ",".join(g.reasons) or "-", g.detail] for g in self.gemms]
        attn_rows = [[_status(a.ready, a.skipped), a.module, a.name, _num(a.head_size),
                      ",".join(a.reasons) or "-", a.detail] for a in self.attention]
        parts = [f"GEMMs ({len(self.gemms)})",
                 _table(["status", "module", "node", "K", "N", "reasons", "detail"], gemm_rows),
                 "", f"Attention blocks ({len(self.attention)})",
                 _table(["status", "module", "softmax", "head", "reasons", "detail"], attn_rows),
                 "", f"Convolutions ({len(self.convs)})",
                 _table(["status", "module", "node", "in", "out", "group", "kernel", "reasons", "detail"],
                        [[_status(c.ready, c.skipped), c.module, c.name, _num(c.in_channels), _num(c.out_channels),
                          str(c.group), c.kernel, ",".join(c.reasons) or "-", c.detail] for c in self.convs]),
                 "", f"Numeric problems ({len(self.numeric)})",
                 _table(["reason", "tensor", "node", "detail"],
                        [[r.reason, r.tensor, r.node or "-", r.detail] for r in self.numeric]),
                 *(["", "Notes", *(f"  {n}" for n in self.notes)] if self.notes else []),
                 "", self.summary()]
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {"ready": self.ready, "summary": self.summary(), "graph_dtype": self.graph_dtype,
                "casts": self.casts,
                "gemms": [dataclasses.asdict(g) for g in self.gemms],
                "attention": [dataclasses.asdict(a) for a in self.attention],
                "convs": [dataclasses.asdict(c) for c in self.convs],
                "numeric": [dataclasses.asdict(r) for r in self.numeric],
                "notes": list(self.notes),
                **({"verify": self.verify} if self.verify is not None else {}),
                "reasons": dict(REASONS)}




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
