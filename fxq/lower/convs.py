"""fxq.lower, conv pass: patch-embedding and 1x1 convs whose input and weight are FP8 -> torch._scaled_mm.

A conv with kernel == stride, no padding, dilation 1 and groups 1 (a ViT/DiT patch embedding; a 1x1
conv is the kernel-1 case) reads each input element once: cutting the input into its non-overlapping
patches turns it into one GEMM, [patches, C * kernel volume] @ W[N, C * kernel volume]^T. The convs
come from the records capture wrote (fxq.placement.records.ConvRecord). Other convs keep their float
conv with the fake-quantized operands (TensorRT runs those in FP8; PyTorch has no FP8 conv kernel).
"""
from __future__ import annotations

import math

import torch
from torch.fx import GraphModule

from fxq.lower.gemms import GEMM_MULTIPLE, Buffers, replace_with_call, weight_fp8
from fxq.lower.ops import fp8_linear, is_qdq, quantize_fp8
from fxq.placement import records


def patches(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """[B, C, *S] -> [B, *S // kernel, C * prod(kernel)], each row one patch in the weight's (C, *kernel) order."""
    n = len(kernel)
    spatial = [s // k for s, k in zip(x.shape[2:], kernel)]
    x = x[(slice(None), slice(None), *(slice(0, s * k) for s, k in zip(spatial, kernel)))]  # conv drops the rest
    split = [d for s, k in zip(spatial, kernel) for d in (s, k)]
    x = x.reshape(x.shape[0], x.shape[1], *split)
    order = [0, *range(2, 2 + 2 * n, 2), 1, *range(3, 3 + 2 * n, 2)]  # B, S/k..., C, k...
    return x.permute(order).reshape(x.shape[0], *spatial, -1)


def fp8_patch_conv(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor,
                   bias: torch.Tensor | None, kernel: tuple[int, ...], out_dtype: torch.dtype) -> torch.Tensor:
    """conv(x, W, stride=kernel) on one _scaled_mm: x float [B, C, *S], w FP8 codes [N, C * prod(kernel)]."""
    y = fp8_linear(quantize_fp8(patches(x, kernel), scale_x), w, scale_x, scale_w, bias, out_dtype)
    return y.movedim(-1, 1)  # [B, N, *S // kernel]


def lower_convs(gm: GraphModule, dtype: torch.dtype, buffers: Buffers) -> tuple[int, int]:
    """Returns (convs on _scaled_mm, recorded convs left as convs)."""
    fp8 = kept = 0
    for node, rec in records.convs(gm):
        x = rec.input(node)
        wq = weight_fp8(gm, rec.weight_of(node), dtype) if is_qdq(x) and rec.is_patch_embedding else None
        k_dim = rec.in_channels * math.prod(rec.kernel)
        if wq is None or k_dim % GEMM_MULTIPLE or rec.out_channels % GEMM_MULTIPLE:
            kept += 1
            continue
        codes, w_scale = wq
        w_node = buffers.add(codes.reshape(rec.out_channels, k_dim).contiguous(), node, "fp8_weight")
        sx = buffers.scale(float(x.args[1]), dtype, node)
        sw = buffers.scale(w_scale, dtype, node)
        bias = node.args[rec.bias_arg] if rec.bias_arg is not None else None
        replace_with_call(node, fp8_patch_conv, (x.args[0], w_node, sx, sw, bias, rec.kernel, dtype))
        fp8 += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return fp8, kept
