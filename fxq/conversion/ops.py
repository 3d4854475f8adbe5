"""The one FP8 fake-quant op fxq puts in graphs.

`torch.ops.fxq.fp8_qdq(x, scale)` is a single custom op so that it survives torch.export and
run_decompositions as one node, and so the ONNX exporter can translate it into exactly one
QuantizeLinear + DequantizeLinear pair (see fxq/export/to_onnx.py). It computes what onnxruntime
computes for that pair. The math is onnx_post/fp8.py's (the one FP8 numerics module); this file
holds the torch ops and re-exports the names fxq's modules use.
"""
from __future__ import annotations

import torch

from fxq.conversion import fused_qdq
from onnx_post import fp8
from onnx_post.fp8 import FP8_MAX, scale_from_amax  # noqa: F401  (re-exported for fxq's modules)

FP8_DTYPE = torch.float8_e4m3fn


def weight_scale_from_amax(amax: float) -> float:
    """A per-tensor weight scale: amax / 448 rounded up to a value every graph dtype stores exactly
    (fp8.portable_scale), so the FP8 codes made at capture mean the same weight in fp32, fp16 and bf16."""
    return fp8.portable_scale(scale_from_amax(amax))


def round_scale(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The scale as the exported graph stores it (fp8.stored_scale), as a 0-d tensor of `dtype`."""
    return torch.tensor(fp8.stored_scale(scale, dtype), dtype=dtype)


def fp8_qdq_reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    return fp8.quantize_dequantize(x, scale)


@torch.library.custom_op("fxq::fp8_qdq", mutates_args=())
def fp8_qdq(x: torch.Tensor, scale: float) -> torch.Tensor:
    if fused_qdq.applies(x):  # inside fused_cpu_qdq(): the same values in one compiled pass
        return fused_qdq.quantize_dequantize(x, scale)
    return fp8_qdq_reference(x, scale)


@fp8_qdq.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def _fp8_qdq_backward(ctx, grad):
    # Straight-through estimator, so a quantized model can still be fine-tuned.
    return grad, None


fp8_qdq.register_autograd(_fp8_qdq_backward)


def quantize_to_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FP8 E4M3 codes of a weight at `scale`, as QuantizeLinear makes them (chunked: see fp8.quantize)."""
    return fp8.quantize(x.detach(), scale)


@torch.library.custom_op("fxq::fp8_dequant", mutates_args=())
def fp8_dequant(codes: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """FP8 codes (a weight stored as FP8) times `scale`, in `dtype`: one DequantizeLinear in ONNX.

    The scale is rounded to `dtype` first, as the exported graph stores it.
    """
    return fp8.dequantize(codes, fp8.stored_scale(scale, dtype), dtype)


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
    return fp8.dequantize(codes, scale.reshape(shape), dtype)


@fp8_dequant_axis.register_fake
def _(codes: torch.Tensor, scale: torch.Tensor, axis: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)
