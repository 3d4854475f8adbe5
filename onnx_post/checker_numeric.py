"""Numeric checks for the readiness checker: values that make a structurally ready file compute NaN.

A Q/DQ scale of 0 divides by zero; a subnormal scale is flushed to 0 by TensorRT's kernels; an FP8
E4M3FN code 0x7F/0xFF is NaN; an FP16 weight past 65504 is inf. None of these change the graph's
structure, so the structural checks cannot see them. Initializers are read straight from their
bytes (external data memory-mapped, read only through onnx_post/external_data.py), so a large model is scanned without copying it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from onnx_post.checker_graph import GraphIndex
from onnx_post.external_data import read_bytes

NUMERIC_REASONS: dict[str, str] = {
    "scale_zero": "A QuantizeLinear/DequantizeLinear scale is 0: x / 0 gives inf/NaN.",
    "scale_subnormal": "A Q/DQ scale is subnormal in its dtype (below the smallest normal, e.g. 6.1e-5 in "
                       "FP16); TensorRT's kernels flush it to 0.",
    "scale_nonfinite": "A Q/DQ scale is NaN or inf.",
    "scale_negative": "A Q/DQ scale is negative; TensorRT needs positive scales.",
    "fp8_nan_code": "An FP8 E4M3FN initializer holds NaN codes (0x7F/0xFF): DequantizeLinear gives NaN.",
    "fp16_inf": "An FP16 initializer read by a GEMM, Conv, normalization or QuantizeLinear holds inf "
                "(typically a weight past 65504 cast to FP16).",
    "initializer_nan": "A float initializer holds NaN values.",
}

# Ops whose constant inputs are weights (directly or through a view): inf there is never intended.
# A -inf elsewhere (an attention-mask fill value feeding Add/Where) is legitimate.
_WEIGHT_READERS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "QuantizeLinear", "LayerNormalization",
                   "BatchNormalization", "InstanceNormalization", "Einsum", "DequantizeLinear"}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_VIEWS = {"Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten"}
_TINY = {TensorProto.FLOAT16: float(np.finfo(np.float16).tiny), TensorProto.FLOAT: float(np.finfo(np.float32).tiny),
         TensorProto.BFLOAT16: float(np.finfo(np.float32).tiny), TensorProto.DOUBLE: float(np.finfo(np.float64).tiny)}


@dataclass
class NumericRow:
    node: str  # the Q/DQ node (scales) or "" (initializers)
    tensor: str
    reason: str
    detail: str = ""


def _raw(t: TensorProto, base_dir: str) -> np.ndarray | None:
    """The tensor's stored bytes as uint8 (external data memory-mapped), or None if not stored raw."""
    if t.data_location == TensorProto.EXTERNAL:
        return read_bytes(t, base_dir)
    if t.raw_data:
        return np.frombuffer(t.raw_data, dtype=np.uint8)
    return None


def _bits(t: TensorProto, base_dir: str, dtype) -> np.ndarray:
    """Element bit patterns as `dtype` (uint8 / uint16 / uint32)."""
    raw = _raw(t, base_dir)
    if raw is not None:
        return raw.view(dtype)
    if t.data_type == TensorProto.FLOAT:
        return np.asarray(t.float_data, dtype=np.float32).view(np.uint32)
    return np.asarray(t.int32_data, dtype=np.int64).astype(dtype)  # fp8 / fp16 / bf16 bit patterns in int32_data


def _reads_as_weight(gi: GraphIndex, name: str) -> bool:
    frontier, seen = [name], set()
    while frontier:
        n = frontier.pop()
        for c in gi.consumers.get(n, []):
            if c.op_type in _WEIGHT_READERS and (c.op_type not in _QDQ or c.input[0] == n):  # not a scale
                return True
            if c.op_type in _VIEWS and c.output[0] not in seen:
                seen.add(c.output[0])
                frontier.append(c.output[0])
    return False


def check_initializers(gi: GraphIndex, skip: set[str] = frozenset()) -> list[NumericRow]:
    rows = []
    for name, t in gi.inits.items():
        if name in skip:
            continue
        if t.data_type == TensorProto.FLOAT8E4M3FN:
            nan = int(np.count_nonzero((_bits(t, gi.base_dir, np.uint8) & 0x7F) == 0x7F))
            if nan:
                rows.append(NumericRow("", name, "fp8_nan_code", f"{nan} NaN codes (0x7F/0xFF)"))
        elif t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT):
            wide = t.data_type == TensorProto.FLOAT
            v = _bits(t, gi.base_dir, np.uint32 if wide else np.uint16)
            exp, mant = ((0x7F800000, 0x007FFFFF) if wide else
                         (0x7C00, 0x03FF) if t.data_type == TensorProto.FLOAT16 else (0x7F80, 0x007F))
            special = (v & exp) == exp
            nan = int(np.count_nonzero(special & ((v & mant) != 0)))
            if nan:
                rows.append(NumericRow("", name, "initializer_nan", f"{nan} NaN values"))
            if t.data_type == TensorProto.FLOAT16:
                inf = int(np.count_nonzero(special & ((v & mant) == 0)))
                if inf and _reads_as_weight(gi, name):
                    rows.append(NumericRow("", name, "fp16_inf", f"{inf} inf values"))
    return rows


def check_scales(gi: GraphIndex) -> list[NumericRow]:
    rows = []
    for n in gi.nodes:
        if n.op_type not in _QDQ or len(n.input) < 2:
            continue
        s = gi.value(n.input[1])
        if s is None:
            continue  # computed at runtime: nothing to read
        s = np.asarray(s, dtype=np.float64).ravel()
        tiny = _TINY.get(gi.elem_type(n.input[1]), _TINY[TensorProto.FLOAT])
        checks = [("scale_nonfinite", ~np.isfinite(s)), ("scale_negative", s < 0), ("scale_zero", s == 0),
                  ("scale_subnormal", (s != 0) & (np.abs(s) < tiny))]
        for code, bad in checks:
            if np.any(bad):
                first = float(s[np.argmax(bad)])
                rows.append(NumericRow(n.name, n.input[1], code,
                                       f"{n.op_type} scale {first:.6g}" + (f" ({int(bad.sum())} of {s.size})"
                                                                           if s.size > 1 else "")))
                break
    return rows


def check_numeric(gi: GraphIndex) -> list[NumericRow]:
    scales = {n.input[1] for n in gi.nodes if n.op_type in _QDQ and len(n.input) > 1}
    return check_scales(gi) + check_initializers(gi, skip=scales)  # a bad scale is reported once, as a scale
