"""Choosing FP8 E4M3 codes for GEMM weights: round-to-nearest, or GPTQ-style error compensation.

Pure tensor functions, no graph code. Every function takes a weight in the GEMM's [N, K] layout
(N outputs, K inputs: nn.Linear's layout) and a scale that is either a scalar (per-tensor) or a
1-D [N] tensor (per output channel). Codes are `float8_e4m3fn` tensors: x_fp8 = clamp(w / s, +-448),
so dequantized = codes.float() * s (the ONNX DequantizeLinear convention).

GPTQ (Frantar et al., 2022) keeps the scale and changes only which representable value each weight
takes: it quantizes one input column at a time and spreads that column's rounding error over the
columns not yet quantized, weighted by the inverse of the input Hessian H = sum x^T x, so that the
GEMM's output error ||X W^T - X W_q^T||^2 = sum_n dw_n^T H dw_n stays small. E4M3's grid is not
uniform, but the algorithm only needs "round this value to the grid", so it carries over unchanged.
"""
from __future__ import annotations

import contextlib

import torch

from onnx_post import fp8

from fxq.conversion.ops import FP8_DTYPE


def _scale_rows(scale, w: torch.Tensor) -> torch.Tensor:
    """The scale as a float32 tensor that broadcasts over W[N, K]: a scalar, or a column [N, 1]."""
    s = torch.as_tensor(scale, dtype=torch.float32, device=w.device)
    if s.ndim == 1 and s.shape[0] == w.shape[0] and s.numel() > 1:
        return s[:, None]
    if s.numel() == 1 and s.ndim <= 1:
        return s.reshape(())
    raise ValueError(f"scale must be a scalar or a 1-D tensor of {w.shape[0]} per-output-channel values "
                     f"for a weight of shape {tuple(w.shape)}, got shape {tuple(s.shape)}")


def _check_weight(w: torch.Tensor) -> None:
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight has NaN or inf values; FP8 codes would be NaN (fix the model in float first)")


def to_fp8(v: torch.Tensor) -> torch.Tensor:
    """Values already in units of the scale (w / s) -> E4M3 codes: saturate at +-448, round to nearest even."""
    return fp8.quantize(v, 1.0, chunk=None)


def weight_scale(w: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """max|W| / 448: a scalar (axis=None) or one value per output channel (axis=0 of W[N, K]).

    A channel (or tensor) of zeros gets the scale 1/448 rather than 0, so the codes stay finite.
    """
    if axis not in (None, 0):
        raise ValueError(f"axis must be None (per-tensor) or 0 (per output channel of W[N, K]), got {axis!r}")
    a = w.detach().abs().float()
    return fp8.scale_from_amax(a.max() if axis is None else a.amax(dim=1))


def round_nearest(w: torch.Tensor, scale) -> torch.Tensor:
    """Round-to-nearest FP8 codes of W[N, K] for a scalar or per-output-channel [N] scale."""
    _check_weight(w)
    return fp8.quantize(w.detach(), _scale_rows(scale, w))


def dequantize(codes: torch.Tensor, scale) -> torch.Tensor:
    """codes * scale in float32 (what DequantizeLinear computes before casting to the graph dtype)."""
    return fp8.dequantize(codes, _scale_rows(scale, codes))


def output_error(w: torch.Tensor, w_q: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per output row, dw^T H dw = ||X (w - w_q)||^2 for H = X^T X (float64, shape [N])."""
    dw = (w.double() - w_q.double())
    return ((dw @ hessian.double()) * dw).sum(dim=1)


@contextlib.contextmanager
def _one_thread():
    """The column loop runs thousands of tiny ops: on a busy CPU, intra-op threads wait on each other
    (15x slower with 2 threads on 2 shared cores, measured). GPUs are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inverse_hessian_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (U^T U = H^-1), more damping if needed.

    With J the reversal permutation and J H J = L L^T, U = J L^-1 J: one Cholesky and one triangular
    inverse (about 3x less work than inverting H and factoring the inverse).
    """
    k = h.shape[0]
    eye = torch.eye(k, dtype=h.dtype, device=h.device)
    base = float(torch.diagonal(h).mean())
    for extra in (1.0, 10.0, 100.0):
        lower, info = torch.linalg.cholesky_ex((h + damp * extra * base * eye).flip(0, 1))
        if int(info) == 0:
            return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)
    return None


def gptq_fp8(
    w: torch.Tensor,
    hessian: torch.Tensor,
    scale,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> torch.Tensor:
    """FP8 E4M3 codes for W[N, K] chosen with GPTQ's error compensation (same scale as round-to-nearest).

    hessian: H = sum over calibration tokens of x^T x, shape [K, K] (fxq.calibration.observers.HessianObserver).
    damp: fraction of mean(diag H) added to the diagonal, for a stable inverse.
    act_order: quantize the columns with the largest diag(H) first (GPTQ's "act-order").

    Each output row keeps whichever of GPTQ's and round-to-nearest's codes gives the smaller
    dw^T H dw (the undamped error on the calibration data), so the result never has a larger
    output error than round-to-nearest on that data.
    """
    _check_weight(w)
    n, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"hessian must be [K, K] = [{k}, {k}] for a weight of shape {tuple(w.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if block_size < 1 or not 0.0 <= damp:
        raise ValueError(f"block_size must be >= 1 and damp >= 0, got {block_size}, {damp}")
    s = _scale_rows(scale, w)
    nearest = to_fp8(w.detach().float() / s)
    h = hessian.detach().double().to(w.device)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("hessian has NaN or inf values; check the calibration data")
    if not bool((torch.diagonal(h) > 0).any()):
        return nearest  # no calibration signal at all: nothing to compensate against

    h_work = h.clone()
    dead = torch.diagonal(h_work) == 0  # inputs that were always 0: their weights never matter here
    h_work[dead, dead] = 1.0
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else None
    if perm is not None:
        h_work = h_work[perm][:, perm]
    hinv = _inverse_hessian_cholesky(h_work, damp)
    if hinv is None:
        return nearest
    hinv = hinv.float()

    # Work in code units (W / s): the error feedback is linear, so per-row scales just rescale rows.
    # Transposed, [K, N]: input column j of W is row j, contiguous, and updates are in-place BLAS calls.
    work = (w.detach().float() / s).T.contiguous()
    if perm is not None:
        work = work[perm]
    codes = torch.empty((k, n), dtype=FP8_DTYPE, device=w.device)
    with _one_thread():
        for i1 in range(0, k, block_size):
            i2 = min(i1 + block_size, k)
            block = work[i1:i2]  # a view: updated in place
            err = torch.empty_like(block)
            hb = hinv[i1:i2, i1:i2]
            for j in range(i2 - i1):
                q = to_fp8(block[j])
                codes[i1 + j] = q
                torch.div(block[j] - q.float(), hb[j, j], out=err[j])
                block[j + 1:].addr_(hb[j, j + 1:], err[j], alpha=-1.0)  # spread the error over later columns
            work[i2:].addmm_(hinv[i1:i2, i2:].T, err, alpha=-1.0)  # lazy update of the columns after this block
    if perm is not None:
        codes = codes[torch.argsort(perm)]
    codes = codes.T.contiguous()

    w64 = w.detach()
    better = output_error(w64, dequantize(codes, scale), h) <= output_error(w64, dequantize(nearest, scale), h)
    return torch.where(better[:, None], codes, nearest)


def bias_correction(w: torch.Tensor, w_q: torch.Tensor, mean_x: torch.Tensor) -> torch.Tensor:
    """E[(W - W_q) x] over the calibration tokens: add it to the bias to remove the mean output shift."""
    return ((w.double() - w_q.double()) @ mean_x.double()).float()


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(||ref||^2 / ||ref - approx||^2)."""
    ref = reference.double()
    noise = float(((ref - approx.double()) ** 2).sum())
    signal = float((ref ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * torch.log10(torch.tensor(signal / noise)).item()
