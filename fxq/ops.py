"""The one FP8 fake-quant op fxq puts in graphs.

`torch.ops.fxq.fp8_qdq(x, scale)` is a single custom op so that it survives torch.export and
run_decompositions as one node, and so the ONNX exporter can translate it into exactly one
QuantizeLinear + DequantizeLinear pair (see fxq/onnx_export.py). It computes what onnxruntime
computes for that pair: the scale is first rounded to x's dtype (the ONNX scale has the graph
dtype), x / scale is done in float32, saturated to +-448 and rounded to nearest-even E4M3.
"""
from __future__ import annotations

import functools
import math

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_DTYPE = torch.float8_e4m3fn


def scale_from_amax(amax: float) -> float:
    """ONNX convention: x_fp8 = x / scale. An amax of 0 (a dead tensor) still gets a valid scale."""
    amax = float(amax)
    if math.isnan(amax) or amax < 0:  # fxq/validate.py refuses these upstream; never paper over them here
        raise ValueError(f"amax must be >= 0 and not NaN, got {amax}")
    if amax == 0.0:
        amax = 1.0
    return amax / FP8_MAX


def round_scale(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The scale as the exported graph stores it: a scalar of the graph's float dtype, normal and finite.

    fxq/onnx_export.py writes exactly this value, so torch and ONNX numerics agree."""
    s = torch.tensor(scale, dtype=dtype)
    info = torch.finfo(dtype)
    if abs(s.item()) < info.tiny or not torch.isfinite(s):
        # Too small (or large) for the dtype: clamp into its normal range rather than emit 0, a
        # subnormal (flushed to 0 by TensorRT kernels) or inf.
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


def quantize_to_fp8(x: torch.Tensor, scale: float, chunk: int = 1 << 20) -> torch.Tensor:
    """FP8 E4M3 codes of x at `scale` (saturating, round to nearest even), as QuantizeLinear makes them.

    Works through `chunk` elements at a time: whole-weight float32 temporaries would fragment the
    heap that the 1-byte codes are allocated between (measured: 5 bytes/param of RSS on ViT-L).
    """
    flat = x.detach().reshape(-1)
    codes = torch.empty(flat.shape, dtype=FP8_DTYPE, device=x.device)
    for i in range(0, flat.numel(), chunk):
        codes[i:i + chunk] = torch.clamp(flat[i:i + chunk].float() / float(scale), -FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return codes.view(x.shape)


@torch.library.custom_op("fxq::fp8_dequant", mutates_args=())
def fp8_dequant(codes: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """FP8 codes (a weight stored as FP8) times `scale`, in `dtype`: one DequantizeLinear in ONNX.

    The scale is rounded to `dtype` first, as the exported graph stores it.
    """
    return (codes.float() * _graph_scale(float(scale), dtype)).to(dtype)


@fp8_dequant.register_fake
def _(codes: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)


@torch.library.custom_op("fxq::fp8_dequant_axis", mutates_args=())
def fp8_dequant_axis(codes: torch.Tensor, scale: torch.Tensor, axis: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel FP8 weight: codes times a 1-D `scale` along `axis`, in `dtype`.

    One DequantizeLinear with that axis in ONNX. `scale` is a program buffer, so a dtype conversion
    of the program rounds it to the graph dtype exactly as the ONNX initializer is stored.
    """
    shape = [1] * codes.ndim
    shape[axis] = -1
    return (codes.float() * scale.float().reshape(shape)).to(dtype)


@fp8_dequant_axis.register_fake
def _(codes: torch.Tensor, scale: torch.Tensor, axis: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)
