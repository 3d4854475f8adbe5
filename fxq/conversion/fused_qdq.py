"""fp8_qdq on the CPU in one compiled pass, for the searches that run a fake-quant graph hundreds of times.

Eager Q/DQ on the CPU walks memory five times (divide, clamp, FP8 cast, index conversion, table read) and
makes about a third of a fake-quant forward's time on DINOv2 (fxq.Fallback and fxq.sensitivity run
hundreds of them). Here the same values come out of one loop that torch.compile writes in C++: E4M3's
round-to-nearest-even done on the float32 bits (normal range: keep 3 mantissa bits, ties to even), and
round(v * 512) / 512 below 2^-6, where E4M3's step is a fixed 2^-9. It needs no FP8 cast, which inductor
leaves scalar. The result equals onnx_post.fp8.quantize_dequantize bit for bit (tests/test_fused_qdq.py
sweeps float32 bit patterns at several scales, every E4M3 tie, every float16 and bfloat16), NaN's sign aside: a
NaN keeps x's sign here, where the eager op's float16 conversion drops it in its scalar tail.

Only inside `fused_cpu_qdq()`, which fxq.accuracy.measure.GroupMeasure enters when its work is long enough to
pay for compiling, and only for CPU tensors of at least MIN_NUMEL elements (one compile, no shape
specialisations). Where compiling fails (no C++ compiler), fp8_qdq stays eager, with one warning.
"""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from onnx_post import fp8

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the graph dtypes fxq exports
MIN_NUMEL = 4096  # below this, compiled-call overhead is most of the cost
# The first fused call costs ~7 s on 2 cores even with inductor's disk cache warm (dynamo, inductor, cache
# lookup): `fxq sensitivity minilm` took 32 s fused against 22 s eager. Worth it only for longer work.
COMPILE_PAYS_AFTER_S = 120.0
_active = 0  # fused_cpu_qdq() nesting depth
_compiled = None  # the compiled function, False once compiling failed
_checked: set = set()  # dtypes whose first fused result equalled the eager op's
SUBNORMAL = 2.0 ** -6  # E4M3's smallest normal value
_MANTISSA_DROP = 20  # float32 keeps 23 mantissa bits, E4M3 3
_KEEP_MASK = -(1 << _MANTISSA_DROP)  # sign, exponent and the top 3 mantissa bits, as an int32
_SIGN, _FP8_NAN = -(1 << 31), 0x7FF00000  # E4M3 NaN (S.1111.111) widened to float32


def _qdq_bits(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear of x at `scale` (0-d float32), in arithmetic inductor vectorizes."""
    dtype = x.dtype
    x = x.float()
    v = torch.clamp(x / scale, -fp8.FP8_MAX, fp8.FP8_MAX)
    bits = v.view(torch.int32)
    # round to nearest, ties to even: add half an ulp of the kept mantissa less one, plus the kept last bit
    kept = (bits + ((1 << (_MANTISSA_DROP - 1)) - 1 + ((bits >> _MANTISSA_DROP) & 1))) & _KEEP_MASK
    subnormal = torch.round(v * 512.0) * (1.0 / 512.0)  # exact: powers of two; round() is ties-to-even
    r = torch.where(v.abs() < SUBNORMAL, subnormal, kept.view(torch.float32))
    # the FP8 cast keeps only a NaN's sign; x's, as the compiled clamp may hand back the default NaN
    nan = ((x.view(torch.int32) & _SIGN) | _FP8_NAN).view(torch.float32)
    r = torch.where(v != v, nan, r)  # (rounding a NaN's bits could make inf)
    return (r * scale).to(dtype)


def _function():
    global _compiled
    if _compiled is None:
        try:
            _compiled = torch.compile(_qdq_bits, dynamic=True, fullgraph=True)
        except Exception as e:  # noqa: BLE001  (stay correct, just slower)
            _give_up(e)
    return _compiled


def _give_up(e: Exception) -> None:
    global _compiled
    warnings.warn(f"fxq: fused CPU Q/DQ unavailable, using the eager op ({type(e).__name__}: {e})", stacklevel=4)
    _compiled = False


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, a NaN matching any NaN: the eager float16 -> float32 conversion drops a NaN's sign in its
    scalar tail (the last numel % 16 elements), so the eager op's own NaN bits depend on where the NaN sits."""
    bits = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return bool(((a.view(bits) == b.view(bits)) | (a.isnan() & b.isnan())).all())


def worth_compiling(eager_seconds: float) -> bool:
    """Whether work that takes about `eager_seconds` with the eager op should run fused."""
    return eager_seconds >= COMPILE_PAYS_AFTER_S


def applies(x: torch.Tensor) -> bool:
    return _active > 0 and x.device.type == "cpu" and x.numel() >= MIN_NUMEL and x.dtype in DTYPES


@functools.lru_cache(maxsize=4096)
def _scale_tensor(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The graph-stored scale as a 0-d float32 tensor, made once per site (a search calls each site thousands
    of times)."""
    return torch.tensor(fp8.stored_scale(scale, dtype), dtype=torch.float32)


def quantize_dequantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """fp8.quantize_dequantize(x, scale) for a CPU tensor, fused when it can be."""
    fn = _function()
    if not fn:
        return fp8.quantize_dequantize(x, scale)
    s = _scale_tensor(scale, x.dtype)
    # Always a flat, detached, non-view tensor, outside autograd: the compiled code's guards then see only the
    # dtype (a view would guard its base's strides, and grad mode would count too: recompiles per caller).
    flat = x.reshape(-1).detach()
    try:
        with torch.no_grad():
            y = fn(flat, s).view(x.shape)
    except Exception as e:  # noqa: BLE001  (no C++ compiler, or a backend problem)
        _give_up(e)
        return fp8.quantize_dequantize(x, scale)
    if x.dtype not in _checked:  # the first call per dtype is checked against the eager op
        if not _same(y, fp8.quantize_dequantize(x, scale)):
            _give_up(RuntimeError("compiled Q/DQ differs from the eager op"))
            return fp8.quantize_dequantize(x, scale)
        _checked.add(x.dtype)
    return y


@contextlib.contextmanager
def fused_cpu_qdq():
    """Within this block, fxq.fp8_qdq on large CPU tensors runs the fused kernel (the same values)."""
    global _active
    _active += 1
    try:
        yield
    finally:
        _active -= 1
