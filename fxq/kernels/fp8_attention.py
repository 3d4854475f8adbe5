"""FP8 attention with the ONNX graph's numerics: the Triton kernel on Hopper, the torch reference elsewhere.

    out = fp8_attention(q, k, v, q_scale, k_scale, v_scale, mask=None, is_causal=False)

q, k, v: (B, H, T, D) in fp16/bf16 (fp32 runs the reference), any strides: a (B, T, H, D) projection
viewed as (B, H, T, D) by transpose is read in place. The scales are fxq's calibrated per-tensor scales
(amax / 448); the attention scale is already on q in fxq's graphs, hence sm_scale=1. mask: an additive
float mask broadcastable to (B, H, Tq, Tk), e.g. BERT padding (B, 1, 1, Tk).

`fp8_attention` quantizes q, k, v (V with the key axis contiguous, the layout Hopper's FP8 P V product
needs, so that transpose costs nothing extra) and calls the custom op `torch.ops.fxq.fp8_attention`,
which takes the E4M3 codes. The op has a fake implementation, so it works under torch.compile and in
CUDA graphs. Where the kernel cannot run (no CUDA or Triton, a GPU before sm_90, a head dim other than
64 or 128, an fp32 output) the op runs the plain-torch reference and warns once with the reason;
`kernel_unsupported_reason` says in advance which path a call takes (fxq.lower records it).

Numerics, and the decision (measured on an H200, results/gpu_fp8_attention.md):
The graph rounds the normalised probabilities P = softmax(S) to E4M3 at p_scale. A one-pass online
softmax cannot: when it rounds a tile it knows only the running max, not the final max and sum, so it
rounds exp(s - m_running) / p_scale and rescales the sum afterwards. E4M3 is a floating-point grid, so
both round the same real number on grids that differ by a factor, and the output lands within one E4M3
step of P of the graph's: measured 0.57-0.93 steps (max over outputs of |error| / sum_j step(P_ij) |v_j|),
with 1 - cosine about 4e-4, 1.1 to 1.25 times the graph's own P rounding (reference with vs without: 3.5e-4).
`exact_probs=True` adds a first sweep over K for the row max and sum, so the second sweep rounds the
graph's own codes (1 - cosine 3e-6 to 1.5e-5, ties aside); it costs one more q k^T and exp per score:
+43% at the Flux shape (still 1.41x FP16 flash), and at head dim 64 it is slower than FP16 flash.
Default: one pass (EXACT_PROBS_DEFAULT), for the speed; pass exact_probs=True where lower must be a
faithful preview of the graph rather than of a fused engine kernel. Scales p_scale < 1/464 always take
the exact path (the unnormalised values would saturate where the graph's do not).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from fxq.errors import InputError
from fxq.kernels.fp8_attention_reference import P_SCALE, quantize_e4m3, reference_from_codes

KERNEL_HEAD_DIMS = (64, 128)
EXACT_PROBS_DEFAULT = False
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_warned: set[str] = set()


def _triton_kernel():
    """The Triton module, or None where Triton is not installed (CPU machines, CI)."""
    try:
        from fxq.kernels import fp8_attention_triton
    except ImportError:
        return None
    return fp8_attention_triton


def kernel_unsupported_reason(q: torch.Tensor, v: torch.Tensor, out_dtype: torch.dtype) -> Optional[str]:
    """None when the Triton kernel runs for these inputs; otherwise why the reference runs instead."""
    if q.shape[-1] not in KERNEL_HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        return f"head dim {q.shape[-1]} (the kernel has {KERNEL_HEAD_DIMS})"
    if out_dtype not in (torch.float16, torch.bfloat16):
        return f"output dtype {out_dtype} (the kernel writes float16 or bfloat16)"
    if q.device.type != "cuda":
        return f"inputs on {q.device.type}, the FP8 attention kernel needs a CUDA GPU"
    kernel = _triton_kernel()
    if kernel is None:
        return "Triton is not installed"
    if not kernel.device_supported(q.device):
        return f"GPU capability {torch.cuda.get_device_capability(q.device)} is below sm_90 (Hopper)"
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"fxq FP8 attention: running the plain-torch reference, not the kernel: {reason}",
                      stacklevel=3)


@torch.library.custom_op("fxq::fp8_attention", mutates_args=())
def fp8_attention_codes(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, q_scale: float, k_scale: float,
                        v_scale: float, mask: Optional[torch.Tensor], is_causal: bool, sm_scale: float,
                        p_scale: float, exact_probs: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """Attention over E4M3 codes (B, H, T, D) with per-tensor scales; the output is (B, H, Tq, D) out_dtype."""
    reason = kernel_unsupported_reason(q8, v8, out_dtype)
    if reason is not None:
        _warn_once(reason)
        return reference_from_codes(q8, k8, v8, q_scale, k_scale, v_scale, mask=mask, is_causal=is_causal,
                                    sm_scale=sm_scale, p_scale=p_scale, out_dtype=out_dtype)
    b, h, tq, d = q8.shape
    out = torch.empty((b, h, tq, d), dtype=out_dtype, device=q8.device)
    full_mask = None if mask is None else mask.expand(b, h, tq, k8.shape[-2])
    # One pass rounds P / p_scale unnormalised, up to 1 / p_scale: past 464 that saturates by more than half
    # an E4M3 step where the graph's normalised P does not, so such scales take the exact path.
    exact = exact_probs or p_scale < 1.0 / 464
    return _triton_kernel().launch(q8, k8, v8, full_mask, out, qk_scale=q_scale * k_scale * sm_scale,
                                   v_scale=v_scale, p_scale=p_scale, is_causal=is_causal, exact_probs=exact)


@fp8_attention_codes.register_fake
def _(q8, k8, v8, q_scale, k_scale, v_scale, mask, is_causal, sm_scale, p_scale, exact_probs, out_dtype):
    return q8.new_empty((*q8.shape[:-1], v8.shape[-1]), dtype=out_dtype)


def _check_inputs(q, k, v, scales, mask, p_scale) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"fp8_attention: {name} must be a (batch, heads, tokens, head_dim) tensor, got "
                             f"{got}; view a (B, T, H, D) projection as x.transpose(1, 2)")
        if x.dtype not in _FLOATS:
            raise InputError(f"fp8_attention: {name} has dtype {x.dtype}; pass float16, bfloat16 or float32 "
                             "(for E4M3 codes call torch.ops.fxq.fp8_attention)")
        if x.device != q.device:
            raise InputError(f"fp8_attention: {name} is on {x.device} but q is on {q.device}; move them together")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise InputError(f"fp8_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast to one")
    if k.shape[:2] != q.shape[:2] or v.shape[:3] != k.shape[:3]:
        raise InputError(f"fp8_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "do not agree (same batch and heads; k and v the same tokens); repeat k/v heads for GQA")
    if k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        raise InputError(f"fp8_attention: head dims differ (q {q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]})")
    for name, s in (*scales, ("p_scale", p_scale)):
        if not isinstance(s, (int, float)) or not (0.0 < float(s) < float("inf")):
            raise InputError(f"fp8_attention: {name} must be a finite positive float (amax / 448), got {s!r}")
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        raise InputError("fp8_attention: mask must be an additive float tensor (0 keeps, -inf drops); convert a "
                         "boolean keep-mask with torch.zeros_like(m, dtype=q.dtype).masked_fill(~m, float('-inf'))")
    target = (*q.shape[:3], k.shape[2])
    try:
        torch.broadcast_shapes(mask.shape, target)
        ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise InputError(f"fp8_attention: mask of shape {tuple(mask.shape)} does not broadcast to (batch, heads, "
                         f"queries, keys) = {target}; BERT padding is (batch, 1, 1, keys)")
    if mask.device != q.device:
        raise InputError(f"fp8_attention: mask is on {mask.device} but q is on {q.device}; move it")


def quantize_values(v: torch.Tensor, v_scale: float) -> torch.Tensor:
    """E4M3 codes of v (B, H, T, D) stored with the key axis contiguous (the FP8 P V product's layout) and each
    row padded to a multiple of 16 bytes (value_rows_padded)."""
    return value_rows_padded(v, lambda x: quantize_e4m3(x, v_scale))


def value_rows_padded(v: torch.Tensor, quantize) -> torch.Tensor:
    """quantize(v) as a (B, H, T, D) view of (B, H, D, T rounded up to 16) storage. With a row stride that is
    not a multiple of 16 bytes (T = 4250 at SD3.5, 197 in ViT) Triton cannot prove alignment and loads V tiles
    one byte at a time instead of in 16-byte async copies (compiled for sm_90: 250 instead of 170 registers)."""
    t = v.shape[-2]
    rows = torch.nn.functional.pad(v.transpose(-1, -2), (0, -t % 16))
    return quantize(rows.contiguous())[..., :t].transpose(-1, -2)


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_scale: float, k_scale: float,
                  v_scale: float, *, mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                  sm_scale: float = 1.0, p_scale: float = P_SCALE,
                  exact_probs: bool = EXACT_PROBS_DEFAULT) -> torch.Tensor:
    """FP8 attention on float q, k, v (B, H, T, D) with the graph's numerics; output in q's dtype."""
    _check_inputs(q, k, v, (("q_scale", q_scale), ("k_scale", k_scale), ("v_scale", v_scale)), mask, p_scale)
    if mask is not None and mask.dim() < 4:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    q8, k8 = quantize_e4m3(q, q_scale), quantize_e4m3(k, k_scale)
    v8 = quantize_values(v, v_scale) if q.is_cuda else quantize_e4m3(v, v_scale)
    return torch.ops.fxq.fp8_attention(q8, k8, v8, float(q_scale), float(k_scale), float(v_scale), mask,
                                       bool(is_causal), float(sm_scale), float(p_scale), bool(exact_probs),
                                       q.dtype)
