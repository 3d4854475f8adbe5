"""The checker's rules for one attention block (Softmax between BMM1 = Q@K^T and BMM2 = P@V)."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from onnx_post.checker_graph import FP8, MAX_STEPS, AttentionBlock, GraphIndex, module_of
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

    # BMM2 output -> (views, a split into token ranges, a concat) -> QuantizeLinear -> DequantizeLinear on every
    # branch, at one scale: these ops only move data, so equal Qs after them are one Q on the block's output.
    quants, ends, path = output_quantizers(gi, blk.bmm2.output[0])
    unpaired = [q for q in quants
                if not any(c.op_type == "DequantizeLinear" for c in gi.consumers.get(q.output[0], []))]
    if ends or unpaired or not quants:
        flag("output_not_quantized", f"output: to {','.join(sorted(ends)) or 'graph output'}")
    elif len({_scale_key(gi, q) for q in quants}) > 1:
        flag("output_scales_differ", f"output: {len(quants)} branches quantized at different scales")
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


OUTPUT_THROUGH = {"Transpose", "Reshape", "Cast", "Identity", "Split", "Slice", "Concat", "Squeeze", "Unsqueeze"}
_SHAPE_ONLY = {"Shape", "Size"}


def output_quantizers(gi: GraphIndex, start: str):
    """Every QuantizeLinear reached from `start` through OUTPUT_THROUGH ops (all outputs of a Split), the op types
    where a branch ends unquantized ("graph output" for a model output), and the ops passed."""
    quants, ends, path, seen, stack = [], set(), [], set(), [start]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        readers = gi.consumers.get(name, [])
        if not readers:
            ends.add("graph output")
        for c in readers:
            if c.op_type in _SHAPE_ONLY or (c.op_type in OUTPUT_THROUGH - {"Concat"} and c.input[0] != name):
                continue  # reads only the shape, or takes the tensor as a Reshape/Slice shape operand
            if c.op_type == "QuantizeLinear":
                quants.append(c)
            elif c.op_type in OUTPUT_THROUGH and len(path) < 4 * MAX_STEPS:
                path.append(c)
                stack.extend(o for o in c.output if o)
            else:
                ends.add(c.op_type)
    return quants, ends, path  # a Q has one data input, so each is reached once


def _scale_key(gi: GraphIndex, q) -> tuple:
    """A Q's scale (and zero point) by value, or by name where it is not a constant."""
    key = []
    for name in q.input[1:3]:
        v = gi.value(name) if name else None
        key.append(name if v is None else (str(v.dtype), tuple(np.asarray(v, dtype=np.float64).reshape(-1))))
    return tuple(key)


def _first_int(*dims):
    return next((d for d in dims if isinstance(d, int)), None)
