"""The checker's rules for one attention block (Softmax between BMM1 = Q@K^T and BMM2 = P@V)."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from onnx_post.checker_graph import FP8, AttentionBlock, GraphIndex, module_of, walk_forward
from onnx_post.checker_report import AttentionRow


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
    if "head_size_out_of_window" in reasons and not _has_fp8(reasons):
        # Float by design: fxq (and ModelOpt) leave such blocks unquantized; nothing here is FP8 to fuse.
        return AttentionRow(sm.name, module_of(sm), False, ["head_size_out_of_window"], head, "; ".join(notes),
                            skipped=True)
    return AttentionRow(sm.name, module_of(sm), not reasons, reasons, head, "; ".join(notes))


_FLOAT_BLOCK = {"q_not_fp8", "k_not_fp8", "v_not_fp8", "softmax_not_quantized"}


def _has_fp8(reasons: list[str]) -> bool:
    """Some of Q, K, V and the probabilities are FP8 (a float block has all four of these reasons)."""
    return not _FLOAT_BLOCK <= set(reasons)


def _first_int(*dims):
    return next((d for d in dims if isinstance(d, int)), None)
