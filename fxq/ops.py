"""The one FP8 fake-quant op fxq puts in graphs.

`torch.ops.fxq.fp8_qdq(x, scale)` is a single custom op so that it survives torch.export and
run_decompositions as one node, and so the ONNX exporter can translate it into exactly one
QuantizeLinear + DequantizeLinear pair (see fxq/onnx_export.py). It computes what onnxruntime
computes for that pair: the scale is first rounded to x's dtype (the ONNX scale has the graph
dtype), x / scale is done in float32, saturated to +-448 and rounded to nearest-even E4M3.
"""
from __future__ import annotations

import functools

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_DTYPE = torch.float8_e4m3fn


def scale_from_amax(amax: float) -> float:
    """ONNX convention: x_fp8 = x / scale. An amax of 0 (a dead tensor) still gets a valid scale."""
    amax = float(amax)
    if not amax > 0.0:
        amax = 1.0
    return amax / FP8_MAX


def round_scale(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The scale as the exported graph stores it: a scalar of the graph's float dtype, never 0."""
    s = torch.tensor(scale, dtype=dtype)
    if s.item() == 0.0 or not torch.isfinite(s):
        # Too small (or large) for fp16: clamp into the dtype's normal range rather than emit 0/inf.
        info = torch.finfo(dtype)
        s = torch.tensor(min(max(scale, info.tiny), info.max), dtype=dtype)
    return s


@functools.lru_cache(maxsize=4096)
def _graph_scale(scale: float, dtype: torch.dtype) -> float:
    # Cached as a Python float: no tensor creation or host sync on every fake-quant call.
    return float(round_scale(scale, dtype))


def fp8_qdq_reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    s = _graph_scale(float(scale), x.dtype)  # exact in float32, so x / s is what ONNX computes
    q = torch.clamp(x.float() / s, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return (q.float() * s).to(x.dtype)


@torch.library.custom_op("fxq::fp8_qdq", mutates_args=())
def fp8_qdq(x: torch.Tensor, scale: float) -> torch.Tensor:
    return fp8_qdq_reference(x, scale)


@fp8_qdq.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def _fp8_qdq_backward(ctx, grad):
    # Straight-through estimator, so a quantized model can still be fine-tuned.
    return grad, None


fp8_qdq.register_autograd(_fp8_qdq_backward)


def quantize_to_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FP8 E4M3 codes of x at `scale` (saturating, round to nearest even), as QuantizeLinear makes them."""
    return torch.clamp(x.detach().float() / float(scale), -FP8_MAX, FP8_MAX).to(FP8_DTYPE)


@torch.library.custom_op("fxq::fp8_dequant", mutates_args=())
def fp8_dequant(codes: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """FP8 codes (a weight stored as FP8) times `scale`, in `dtype`: one DequantizeLinear in ONNX.

    The scale is rounded to `dtype` first, as the exported graph stores it.
    """
    return (codes.float() * _graph_scale(float(scale), dtype)).to(dtype)


@fp8_dequant.register_fake
def _(codes: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)
