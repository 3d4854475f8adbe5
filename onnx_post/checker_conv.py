"""Readiness of each ONNX Conv for TensorRT's FP8 convolution (no torch, no fxq).

Ready: the input comes straight from a per-tensor FP8 DequantizeLinear (Q -> DQ -> Conv, no Cast in
between), the weight is an FP8 E4M3 initializer read through a DequantizeLinear (per-tensor, or 1-D
along axis 0, the output channels), scales in the graph dtype, zero points 0, bias in the graph dtype.
TensorRT has no FP8 kernel for grouped or depthwise convs, for input or output channels that are not
multiples of 16, or for filters of more than 32 taps (NVIDIA ModelOpt's rules, fxq/placement/convs.py):
such a conv with no FP8 on it is skipped (float by design), one with FP8 on it is not ready.
"""
from __future__ import annotations

import math
from typing import Callable

import onnx

from onnx_post.checker_graph import GraphIndex, attr, module_of
from onnx_post.checker_report import ConvRow

MAX_FP8_FILTER = 32  # taps
DESIGN_REASONS = ("conv_grouped", "conv_channels_not_16", "conv_kernel_too_large")
# The GEMM operand checker's codes, renamed for a conv's operands.
_RENAMED = {"input_a_not_dq": "conv_input_not_dq", "input_b_not_dq": "conv_weight_not_fp8_initializer",
            "weight_not_fp8_initializer": "conv_weight_not_fp8_initializer"}


def design_reasons(gi: GraphIndex, node: onnx.NodeProto) -> tuple[list[str], int | None, int | None]:
    """TensorRT's FP8 conv rules that leave this conv in float by design; and its (in, out) channels."""
    shape = gi.shape(node.input[1])
    group = attr(node, "group", 1)
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape):
        return ([] if group == 1 else ["conv_grouped"]), None, None
    out_c, in_c = shape[0], shape[1] * group
    reasons = ["conv_grouped"] if group != 1 else []
    if in_c % 16 or out_c % 16:
        reasons.append("conv_channels_not_16")
    if math.prod(shape[2:]) > MAX_FP8_FILTER:
        reasons.append("conv_kernel_too_large")
    return reasons, in_c, out_c


def check_conv(gi: GraphIndex, node: onnx.NodeProto, fdtype: int, check_operand: Callable) -> ConvRow:
    """check_operand(gi, name, side, fdtype, out_axis) -> (reasons, notes): the GEMM operand checker."""
    design, in_c, out_c = design_reasons(gi, node)
    reasons: list[str] = []
    notes: list[str] = []
    for side, name, axis in (("a", node.input[0], None), ("b", node.input[1], 0)):
        r, d = check_operand(gi, name, side, fdtype, axis)
        reasons += [_RENAMED.get(x, x) for x in r if _RENAMED.get(x, x) not in reasons]
        notes += [n.replace("a:", "input:", 1).replace("b:", "weight:", 1) for n in d]
    has_fp8 = any(gi.producer.get(i) is not None and gi.producer[i].op_type == "DequantizeLinear"
                  for i in node.input[:2])
    if len(node.input) > 2 and node.input[2] and gi.elem_type(node.input[2]) not in (None, fdtype):
        reasons.append("conv_bias_dtype_mismatch")
    skipped = bool(design) and not has_fp8
    row_reasons = design if skipped else design + reasons
    kernel = gi.shape(node.input[1])
    return ConvRow(node.name, module_of(node), not row_reasons, row_reasons, in_c, out_c, attr(node, "group", 1),
                   "x".join(map(str, kernel[2:])) if kernel else "?", "; ".join(notes) if not skipped else "",
                   skipped=skipped)
