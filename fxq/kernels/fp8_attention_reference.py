"""FP8 attention with the ONNX graph's semantics, in plain torch (CPU or GPU).

What fxq's fake-quant graph (and the TensorRT engine built from it) computes for one attention block:

    q, k, v  -> E4M3 fake-quant with their per-tensor scales   (x / s in fp32, clamp +-448, RNE, * s)
    S        =  q k^T * sm_scale (+ additive mask) (causal: key j > query i gets -inf), in fp32
    P        =  softmax(S) in fp32, then E4M3 fake-quant at p_scale (1/448 by convention)
    O        =  P v, returned in q's dtype

The attention scale is already folded into q in fxq's graph, so `sm_scale` defaults to 1. The scales are
used as given: pass the values the graph stores (fxq rounds them to the graph dtype, see fxq/conversion/ops.py).
The GPU kernel (fp8_attention_triton.py) is tested against this module.
"""
from __future__ import annotations

import torch

FP8_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn
P_SCALE = 1.0 / 448.0  # softmax-output scale of fxq's graphs (ModelOpt / Torch-TensorRT convention)
_MIN_NORMAL_EXP = -6  # E4M3: smallest normal 2^-6, 3 mantissa bits, subnormal step 2^-9
_ROWS_PER_CHUNK_ELEMS = 1 << 27  # bound on the fp32 S chunk (512 MiB), so long sequences fit on a GPU


def quantize_e4m3(x: torch.Tensor, scale: float) -> torch.Tensor:
    """E4M3 codes of x at a per-tensor scale: x / scale in fp32, saturated to +-448, rounded to nearest even."""
    return torch.clamp(x.float() / scale, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def fake_quant_e4m3(x: torch.Tensor, scale: float) -> torch.Tensor:
    """quantize_e4m3 then dequantize, in fp32 (QuantizeLinear + DequantizeLinear)."""
    return quantize_e4m3(x, scale).float() * scale


def e4m3_step(codes: torch.Tensor) -> torch.Tensor:
    """The spacing of the E4M3 grid at each value (in code units): 2^(e-3) for normals, 2^-9 below 2^-6."""
    mag = codes.float().abs()
    exp = torch.floor(torch.log2(mag.clamp_min(2.0 ** _MIN_NORMAL_EXP)))
    return torch.exp2(exp - 3)


def _scores(q: torch.Tensor, k: torch.Tensor, mask, is_causal: bool, sm_scale: float, rows: slice) -> torch.Tensor:
    """fp32 attention scores for query rows `rows`. q, k: (B, H, T, D) fp32 (already fake-quantized)."""
    s = torch.matmul(q[:, :, rows], k.transpose(-1, -2)) * sm_scale  # (B, H, t, S)
    if mask is not None:
        rows_of_mask = mask[..., rows, :] if mask.dim() >= 2 and mask.shape[-2] != 1 else mask
        s = s + rows_of_mask.float()
    if is_causal:  # top-left aligned, as SDPA's is_causal: query i sees keys j <= i
        i = torch.arange(rows.start, rows.stop, device=s.device)[:, None]
        j = torch.arange(s.shape[-1], device=s.device)[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    return s


def _row_chunks(t: int, s: int, heads: int):
    step = max(1, _ROWS_PER_CHUNK_ELEMS // max(1, s * heads))
    for start in range(0, t, step):
        yield slice(start, min(t, start + step))


def attention_from_dequantized(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask=None,
                               is_causal: bool = False, sm_scale: float = 1.0, p_scale: float | None = P_SCALE,
                               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Attention over already fake-quantized fp32 q, k, v (B, H, T, D); P fake-quantized unless p_scale is None."""
    b, h, t, _ = q.shape
    out = torch.empty((b, h, t, v.shape[-1]), dtype=out_dtype, device=q.device)
    for rows in _row_chunks(t, k.shape[-2], b * h):
        p = torch.softmax(_scores(q, k, mask, is_causal, sm_scale, rows), dim=-1)
        if p_scale is not None:
            p = fake_quant_e4m3(p, p_scale)
        out[:, :, rows] = torch.matmul(p, v).to(out_dtype)
    return out


def fp8_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_scale: float, k_scale: float,
                            v_scale: float, *, mask=None, is_causal: bool = False, sm_scale: float = 1.0,
                            p_scale: float | None = P_SCALE) -> torch.Tensor:
    """The graph's FP8 attention on float q, k, v (B, H, T, D); output in q's dtype."""
    qd, kd, vd = (fake_quant_e4m3(x, s) for x, s in ((q, q_scale), (k, k_scale), (v, v_scale)))
    return attention_from_dequantized(qd, kd, vd, mask=mask, is_causal=is_causal, sm_scale=sm_scale,
                                      p_scale=p_scale, out_dtype=q.dtype)


def reference_from_codes(q8, k8, v8, q_scale: float, k_scale: float, v_scale: float, *, mask=None,
                         is_causal: bool = False, sm_scale: float = 1.0, p_scale: float = P_SCALE,
                         out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The same computation from E4M3 codes (what the kernel receives)."""
    return attention_from_dequantized(q8.float() * q_scale, k8.float() * k_scale, v8.float() * v_scale,
                                      mask=mask, is_causal=is_causal, sm_scale=sm_scale, p_scale=p_scale,
                                      out_dtype=out_dtype)


def probs_step_envelope(q8, k8, v8, q_scale: float, k_scale: float, v_scale: float, *, mask=None,
                        is_causal: bool = False, sm_scale: float = 1.0, p_scale: float = P_SCALE) -> torch.Tensor:
    """How far O may move if every element of the quantized P moves by one E4M3 step: sum_j step(P_ij) |v_j|.

    This is the yardstick of "within one FP8 step of P" for a kernel whose P rounds differently (a one-pass
    online softmax rounds exp(s - running max), not the normalised probabilities). fp32, (B, H, T, D)."""
    qd, kd, vd = q8.float() * q_scale, k8.float() * k_scale, v8.float() * v_scale
    b, h, t, _ = qd.shape
    out = torch.empty((b, h, t, vd.shape[-1]), dtype=torch.float32, device=qd.device)
    for rows in _row_chunks(t, kd.shape[-2], b * h):
        p = torch.softmax(_scores(qd, kd, mask, is_causal, sm_scale, rows), dim=-1)
        codes = quantize_e4m3(p, p_scale)
        out[:, :, rows] = torch.matmul(e4m3_step(codes) * p_scale, vd.abs())
    return out
