"""FP8 E4M3 numerics as ONNX QuantizeLinear / DequantizeLinear (saturate=1, zero point 0) define them.

The one place fxq and onnx_post round to FP8. Conventions (ONNX's, not torchao float8's):
    scale = amax / 448                                   (scale_from_amax)
    s     = the scale as the graph stores it             (stored_scale: in the graph dtype, normal, finite)
    codes = E4M3(clamp(x / s, -448, 448)) in float32     (quantize: round to nearest even)
    y     = codes * s in float32, cast to the graph dtype (dequantize)
`quantize` always takes the scale, never its inverse.

Works on numpy arrays (codes are ml_dtypes.float8_e4m3fn) and on torch tensors (codes are
torch.float8_e4m3fn). torch is only touched when a tensor is handed in, so onnx_post runs without it.
"""
from __future__ import annotations

import functools
import math
import sys

import ml_dtypes
import numpy as np

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_NUMPY = np.dtype(ml_dtypes.float8_e4m3fn)
CHUNK = 1 << 20  # elements per step when quantizing a large tensor

_NUMPY_FLOATS = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                 "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _torch_tensor(x):
    """torch.Tensor when x is one, else None (never imports torch: if it is not loaded, x is no tensor)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and isinstance(x, torch.Tensor) else None


def numpy_dtype(dtype) -> np.dtype:
    """numpy dtype of a float dtype given as numpy, ml_dtypes or torch (torch.bfloat16 -> ml_dtypes.bfloat16)."""
    name = str(dtype).removeprefix("torch.")
    if name in _NUMPY_FLOATS:
        return _NUMPY_FLOATS[name]
    try:
        return np.dtype(dtype)
    except TypeError:
        raise ValueError(f"not a float dtype for an FP8 scale: {dtype}") from None


def scale_from_amax(amax):
    """scale = amax / 448; an amax of 0 (a dead tensor or channel) gets 1/448 so the codes stay finite.

    amax: a number (returns a float), or a numpy array / torch tensor (returns the same kind, per element).
    NaN or negative amax is refused: it is a bug upstream, never papered over here.
    """
    torch = _torch_tensor(amax)
    if torch is None and np.ndim(amax) == 0:
        a = float(amax)
        if math.isnan(a) or a < 0:
            raise ValueError(f"amax must be >= 0 and not NaN, got {a}")
        return (a if a > 0 else 1.0) / FP8_MAX
    xp = torch if torch is not None else np
    bad = xp.isnan(amax) | (amax < 0)
    if bool(bad.any()):
        raise ValueError(f"amax must be >= 0 and not NaN, got {float(amax[bad].reshape(-1)[0])}")
    return xp.where(amax > 0, amax, xp.ones_like(amax)) / FP8_MAX


def smallest_scale(dtype) -> float:
    """The smallest scale a graph of float `dtype` may store: its smallest normal number."""
    return float(ml_dtypes.finfo(numpy_dtype(dtype)).smallest_normal)


# Significant bits every graph dtype stores exactly: bfloat16's 8 (float16 has 11, float32 24).
PORTABLE_SCALE_BITS = 8


def portable_scale(scale):
    """The smallest scale >= `scale` that float32, float16 and bfloat16 graphs all store exactly.

    A weight's FP8 codes are made once, at capture, and then read by a DequantizeLinear whose scale is
    stored in the graph dtype (stored_scale). Codes made at a scale the graph cannot store mean another
    weight there: below float16's smallest normal (6.1e-5: a weight with amax < 0.027, e.g. a 3x3 conv
    over 320+ channels at PyTorch's default init) the float16 graph stores the clamped normal, and the
    weight grew by up to 3x in diffusers' SD-1.x UNet (its FP16 output drifted to cosine 0.877).
    Rounded up (to 8 significant bits, at least float16's smallest normal) so that amax / scale stays
    <= 448: nothing saturates. scale: a number (returns a float) or a torch tensor (per channel).
    """
    tiny = smallest_scale(np.float16)
    steps = float(1 << PORTABLE_SCALE_BITS)
    torch = _torch_tensor(scale)
    if torch is not None:
        m, e = torch.frexp(scale.float())
        return torch.ldexp(torch.ceil(m * steps) / steps, e.float()).clamp(min=tiny)
    m, e = math.frexp(float(scale))
    return max(math.ldexp(math.ceil(m * steps) / steps, e), tiny)


@functools.lru_cache(maxsize=4096)
def _stored(scale: float, dtype: np.dtype) -> float:
    # Through float32 first, as torch converts a Python number to fp16/bf16; past the range is inf.
    with np.errstate(over="ignore"):
        s = np.array(np.float32(scale), dtype=dtype)
    tiny, big = smallest_scale(dtype), float(ml_dtypes.finfo(dtype).max)
    if not np.isfinite(s) or abs(float(s)) < tiny:
        # Too small (or too large) for the dtype: clamp into its normal range rather than store 0, a
        # subnormal (TensorRT's kernels flush it to 0) or inf.
        s = np.array(min(max(scale, tiny), big), dtype=dtype)
    return float(s)


def stored_scale(scale: float, dtype) -> float:
    """The scale as a graph of float `dtype` stores it: rounded to dtype, clamped into its normal finite range.

    Returned as a Python float that dtype (and float32) represents exactly. Writers of the ONNX scale
    constant and every computation that must match the graph use this value.
    """
    scale = float(scale)
    if math.isnan(scale) or scale < 0:
        raise ValueError(f"an FP8 scale must be >= 0 and not NaN, got {scale}")
    return _stored(scale, numpy_dtype(dtype))


def stored_scale_array(scale: float, dtype) -> np.ndarray:
    """stored_scale as a 0-d numpy array of `dtype` (what an ONNX scale initializer holds)."""
    dtype = numpy_dtype(dtype)
    return np.array(stored_scale(scale, dtype), dtype=dtype)


def _codes_torch(torch, x, scale):
    return torch.clamp(x.float() / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def _codes_numpy(x, scale):
    return np.clip(np.asarray(x, np.float32) / scale, -FP8_MAX, FP8_MAX).astype(FP8_NUMPY)


def quantize(x, scale, chunk: int | None = CHUNK):
    """E4M3 codes of x at `scale`: x / scale in float32, saturated to +-448, rounded to nearest even.

    scale: a number, or an array/tensor that broadcasts against x (per-channel). It is used as given
    (in float32): pass stored_scale(...) where the graph's rounded scale is meant.
    chunk: with a scalar scale, work through this many elements at a time, so a large weight never
    has a whole float32 copy (whole-weight temporaries fragment the heap the 1-byte codes live
    between: 5 bytes/param of RSS on ViT-L, measured). None: one expression (for traced graphs).
    """
    torch = _torch_tensor(x)
    if torch is not None:
        s = scale.float() if isinstance(scale, torch.Tensor) else float(np.float32(scale))
        if chunk is None or not isinstance(s, float) or x.numel() <= chunk:
            return _codes_torch(torch, x, s)
        flat = x.reshape(-1)
        codes = torch.empty(flat.shape, dtype=torch.float8_e4m3fn, device=x.device)
        for i in range(0, flat.numel(), chunk):
            codes[i:i + chunk] = _codes_torch(torch, flat[i:i + chunk], s)
        return codes.view(x.shape)
    x = np.asarray(x)
    s = np.asarray(scale, dtype=np.float32)
    if chunk is None or s.size != 1 or x.size <= chunk:
        return _codes_numpy(x, s)
    flat = x.reshape(-1)
    codes = np.empty(flat.shape, dtype=FP8_NUMPY)
    for i in range(0, flat.size, chunk):
        codes[i:i + chunk] = _codes_numpy(flat[i:i + chunk], s.reshape(()))
    return codes.reshape(x.shape)


def dequantize(codes, scale, dtype=None):
    """codes * scale in float32, then cast to `dtype` (default: float32), as DequantizeLinear computes it."""
    torch = _torch_tensor(codes)
    if torch is not None:
        s = scale.float() if isinstance(scale, torch.Tensor) else float(np.float32(scale))
        y = codes.float() * s
        return y if dtype is None else y.to(dtype)
    y = np.asarray(codes).astype(np.float32) * np.asarray(scale, dtype=np.float32)
    return y if dtype is None else y.astype(numpy_dtype(dtype))


def quantize_dequantize(x, scale: float):
    """QuantizeLinear -> DequantizeLinear of x with the scale stored in x's dtype (fxq.fp8_qdq's math).

    A CPU tensor's codes are dequantized by table: `dequantize` of each of the 256 codes, read by code. Same
    values, bit for bit (the table is dequantize's own output; tests/test_ops.py sweeps the float32 range,
    every float16 and bfloat16), at a fraction of the cost: torch converts FP8 to float one element at a time
    on the CPU, which made that conversion most of the fake-quant forward's Q/DQ time.
    """
    s = stored_scale(scale, x.dtype)
    codes = quantize(x, s, chunk=None)
    torch = _torch_tensor(x)
    if torch is None or x.device.type != "cpu":
        return dequantize(codes, s, x.dtype)
    table = dequantize(_all_codes(torch), s, x.dtype)  # 256 values, by code
    return table.index_select(0, codes.view(torch.uint8).reshape(-1).long()).view(x.shape)


def _all_codes(torch):
    """The 256 float8_e4m3fn codes, code i at index i (NaN twice, -0 once)."""
    return torch.arange(256, dtype=torch.int16).to(torch.uint8).view(torch.float8_e4m3fn)
