"""What fxq.lower's graphs call (plain PyTorch, so Dynamo and Inductor trace straight through), and
the fxq ops they replace."""
from __future__ import annotations

import torch
from torch.fx import Node

from onnx_post import fp8

from fxq.conversion.insert import DEQUANT, QDQ  # noqa: F401  (the fxq ops lower replaces)
from fxq.kernels import fp8_attention_codes  # noqa: F401  (registers torch.ops.fxq.fp8_attention)
from fxq.kernels.fp8_attention import value_rows_padded

FP8_ATTENTION = torch.ops.fxq.fp8_attention.default


def is_qdq(node) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target is QDQ


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E4M3 codes of x at `scale` (an fp32 0-d tensor of fp8.stored_scale): x / scale, saturated, rounded,
    exactly as the ONNX graph's QuantizeLinear divides (the one FP8 numerics module, onnx_post/fp8.py)."""
    return fp8.quantize(x, scale, chunk=None)


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fxq.fp8_qdq as ATen ops Inductor can fuse: QuantizeLinear then DequantizeLinear, back in x's dtype."""
    return fp8.dequantize(quantize_fp8(x, scale), scale, x.dtype)


def fp8_linear(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor,
               bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(..., K) FP8 codes @ W[N, K]^T -> (..., N) in out_dtype, on one _scaled_mm (A row-major, B column-major)."""
    a = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch._scaled_mm(a, w.t(), scale_x, scale_w, bias=bias, out_dtype=out_dtype, use_fast_accum=True)
    return out.reshape(*x.shape[:-1], w.shape[0])


def to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


def quantize_values(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E4M3 codes of v (B, H, T, D) stored with the key axis contiguous: the layout Hopper's FP8 P V product
    reads (fxq/kernels/fp8_attention.py), rows padded to 16 bytes so the kernel's V loads are aligned."""
    return value_rows_padded(v, lambda x: quantize_fp8(x, scale))


def additive_mask(cond: torch.Tensor, drop_where_true: bool) -> torch.Tensor:
    """A boolean mask as the additive fp32 mask the FP8 attention op takes (0 keeps, -inf drops)."""
    drop = cond if drop_where_true else ~cond
    return torch.zeros(drop.shape, dtype=torch.float32, device=drop.device).masked_fill(drop, float("-inf"))
