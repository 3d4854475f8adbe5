"""The FP8 attention kernel for Hopper (sm_90), in Triton. Imported only where Triton and CUDA exist.

One program owns BLOCK_M query rows of one (batch, head): q stays in registers, K and V tiles stream
through shared memory, S = q k^T runs on FP8 tensor cores with fp32 accumulation, P is quantized to E4M3
(at p_scale) before the P V product, also on FP8 tensor cores. Scores live in log2 units (exp2 is the
hardware instruction), so the scales, sm_scale and the mask are folded into one multiply and one add.

V is read as (D, BLOCK_N) tiles and transposed as a shared-memory view: Hopper's FP8 wgmma wants both
operands K-major, which for P V means V with the key axis contiguous. Any strides work; the fast layout
is V codes with the key axis contiguous and each row a multiple of 16 bytes (fp8_attention.py writes them
so when it quantizes): with rows of T bytes and T not a multiple of 16 (SD3.5's 4250, ViT's 197) Triton
cannot prove alignment and loads V byte by byte (0.62 vs 0.37 ms at SD3.5's shape on an H200).

Two ways to quantize P (EXACT_PROBS), see the numerics note in fp8_attention.py:
  one pass: online softmax, P rounded as exp(s - running max) / p_scale, rescaled at the end;
  two pass: a first sweep over K finds the row max and sum, the second rounds the normalised
            probabilities / p_scale, exactly the codes the ONNX graph makes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _exp2(x, FTZ: tl.constexpr):
    """2^x on the SFU. FTZ skips the denormal fix-up of the plain ex2.approx.f32: results below 2^-126 become 0,
    which changes nothing here (E4M3's smallest step is 2^-9 and those terms vanish in the row sum)."""
    if FTZ:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.math.exp2(x)


@triton.jit
def _scores(q, k_ptrs, mask_ptr, mask_rows, start_n, offs_m, offs_n, n_keys, stride_kn, stride_mn, qk_scale,
            MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BOUNDARY: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of scores, masked-out keys at -inf. Without a mask the raw q.k codes
    product comes back (the caller folds qk_scale into its exp2 FMA); with one, log2 units plus the mask."""
    cols = start_n + offs_n
    if BOUNDARY:
        k = tl.load(k_ptrs + start_n * stride_kn, mask=(cols < n_keys)[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs + start_n * stride_kn)
    s = tl.dot(q, tl.trans(k))
    if MASK_KIND == 1:  # one row per (batch, head), broadcast over queries (BERT padding)
        if BOUNDARY:
            add = tl.load(mask_ptr + cols * stride_mn, mask=cols < n_keys, other=0.0)
        else:
            add = tl.load(mask_ptr + cols * stride_mn)
        s = s * qk_scale + add.to(tl.float32)[None, :] * 1.4426950408889634
    if MASK_KIND == 2:  # a full (queries, keys) mask
        add = tl.load(mask_rows + cols[None, :] * stride_mn, mask=(cols < n_keys)[None, :], other=0.0)
        s = s * qk_scale + add.to(tl.float32) * 1.4426950408889634
    if CAUSAL:
        s = tl.where(offs_m[:, None] >= cols[None, :], s, float("-inf"))
    if BOUNDARY:
        s = tl.where((cols < n_keys)[None, :], s, float("-inf"))
    return s


@triton.jit
def _pv(acc, p, v_ptrs, start_n, offs_n, n_keys, stride_vn, BOUNDARY: tl.constexpr):
    """acc += E4M3(p) @ V_tile (codes) on FP8 tensor cores; p is already P / p_scale, in [0, 448]."""
    p8 = p.to(tl.float8e4nv)  # cvt.rn.satfinite: nearest even, saturating (exp2 may land an ulp over 448)
    if BOUNDARY:
        vt = tl.load(v_ptrs + start_n * stride_vn, mask=((start_n + offs_n) < n_keys)[None, :], other=0.0)
    else:
        vt = tl.load(v_ptrs + start_n * stride_vn)
    return tl.dot(p8, tl.trans(vt), acc)


@triton.jit
def _sweep(acc, m_i, l_i, lo, hi, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n, n_keys,
           stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p,
           BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BOUNDARY: tl.constexpr,
           PHASE: tl.constexpr, FTZ: tl.constexpr):
    """PHASE 0: one-pass online softmax. 1: row max and sum only. 2: P from the final max and sum.

    m_i is the running max in log2 units. Phase 0 rounds exp2(s - m_i + log2(1 / p_scale)), so its l_i
    sums P / p_scale unnormalised; phase 2 gets l_i = 1 / (p_scale * row sum) and rounds exp2(s - m) * l_i."""
    if MASK_KIND == 0:
        a = qk_scale  # raw scores: the scale rides in the exp2 argument's FMA
    else:
        a = 1.0
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        s = _scores(q, k_ptrs, mask_ptr, mask_rows, start_n, offs_m, offs_n, n_keys, stride_kn, stride_mn,
                    qk_scale, MASK_KIND, CAUSAL, BOUNDARY)
        if PHASE == 2:
            p = _exp2(s * a - m_i[:, None], FTZ) * l_i[:, None]
            acc = _pv(acc, p, v_ptrs, start_n, offs_n, n_keys, stride_vn, BOUNDARY)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * a)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row masked so far: keep exp2 finite
            alpha = _exp2(m_i - m_safe, FTZ)
            if PHASE == 0:
                p = _exp2(s * a - (m_safe - log2_inv_p)[:, None], FTZ)
            else:
                p = _exp2(s * a - m_safe[:, None], FTZ)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
            if PHASE == 0:
                acc = _pv(acc * alpha[:, None], p, v_ptrs, start_n, offs_n, n_keys, stride_vn, BOUNDARY)
    return acc, m_i, l_i


@triton.jit
def _sweep_keys(acc, m_i, l_i, hi, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n, n_keys,
                stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p,
                BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, PHASE: tl.constexpr,
                FTZ: tl.constexpr):
    """Keys [0, hi): whole tiles without key-bound checks, then the ragged last tile with them."""
    full = (hi // BLOCK_N) * BLOCK_N
    acc, m_i, l_i = _sweep(acc, m_i, l_i, 0, full, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n, n_keys,
                           stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p,
                           BLOCK_N, MASK_KIND, CAUSAL, False, PHASE, FTZ)
    return _sweep(acc, m_i, l_i, full, hi, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n, n_keys,
                  stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p, BLOCK_N, MASK_KIND, CAUSAL, True, PHASE, FTZ)


@triton.jit
def _fp8_attention_fwd(Q, K, V, Mask, Out, qk_scale, v_scale, p_scale,
                       stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_vb, stride_vh, stride_vn, stride_vd, stride_mb, stride_mh, stride_mm, stride_mn,
                       stride_ob, stride_oh, stride_om, stride_od, H, n_queries, n_keys,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, EXACT_PROBS: tl.constexpr,
                       FTZ: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows_ok = (offs_m < n_queries)[:, None]

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=rows_ok, other=0.0)
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_d[:, None] * stride_vd + offs_n[None, :] * stride_vn
    mask_ptr = Mask + b * stride_mb + h * stride_mh
    mask_rows = mask_ptr + tl.minimum(offs_m, n_queries - 1)[:, None] * stride_mm  # (BLOCK_M, 1), in bounds
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    log2_inv_p = -tl.log2(p_scale)

    hi = n_keys
    if CAUSAL:
        hi = tl.minimum(n_keys, (start_m + 1) * BLOCK_M)
    if EXACT_PROBS:  # sweep 1: row max and sum; sweep 2: P exactly as the graph rounds it
        acc, m_i, l_i = _sweep_keys(acc, m_i, l_i, hi, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n,
                                    n_keys, stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p,
                                    BLOCK_N, MASK_KIND, CAUSAL, 1, FTZ)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        l_i = 1.0 / (p_scale * l_i)  # a fully masked row: inf, and 0 * inf = NaN, as softmax gives
        acc, m_i, l_i = _sweep_keys(acc, m_i, l_i, hi, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n,
                                    n_keys, stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p,
                                    BLOCK_N, MASK_KIND, CAUSAL, 2, FTZ)
        o = acc * (p_scale * v_scale)
    else:
        acc, m_i, l_i = _sweep_keys(acc, m_i, l_i, hi, q, k_ptrs, v_ptrs, mask_ptr, mask_rows, offs_m, offs_n,
                                    n_keys, stride_kn, stride_vn, stride_mn, qk_scale, log2_inv_p,
                                    BLOCK_N, MASK_KIND, CAUSAL, 0, FTZ)
        o = acc * (v_scale / l_i)[:, None]  # l_i sums P / p_scale; a fully masked row: 0/0 = NaN, as softmax
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=rows_ok)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per (head dim, queries >= 1024), from benchmarks/attention_fp8.py's
# sweep on an H200 (results/gpu_fp8_attention.md); at head dim 128 the 64-row tile won at every length tried.
CONFIGS = {(64, False): (128, 64, 4, 3), (64, True): (128, 64, 4, 3),
           (128, False): (64, 128, 4, 3), (128, True): (64, 128, 4, 3)}
FTZ_EXP = True


def launch(q8, k8, v8, mask, out, *, qk_scale: float, v_scale: float, p_scale: float, is_causal: bool,
           exact_probs: bool, config=None, ftz_exp: bool = None):
    """q8, k8, v8: E4M3 codes (B, H, T, D), any strides. mask: None or an additive mask already expanded
    to (B, H, Tq, Tk) (stride 0 on broadcast axes). out: (B, H, Tq, D) fp16/bf16, written in place."""
    b, h, tq, d = q8.shape
    tk = k8.shape[-2]
    block_m, block_n, warps, stages = config or CONFIGS[d, tq >= 1024]
    ftz_exp = FTZ_EXP if ftz_exp is None else ftz_exp
    if mask is None:
        mask_kind, mask_arg, mstrides = 0, q8, (0, 0, 0, 0)  # never read
    else:
        mask_kind = 1 if mask.stride(2) == 0 else 2
        mask_arg, mstrides = mask, mask.stride()
    grid = (triton.cdiv(tq, block_m), b * h)
    _fp8_attention_fwd[grid](
        q8, k8, v8, mask_arg, out, qk_scale * LOG2E, v_scale, p_scale,
        *q8.stride(), *k8.stride(), *v8.stride(), *mstrides, *out.stride(), h, tq, tk,
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, MASK_KIND=mask_kind, CAUSAL=is_causal,
        EXACT_PROBS=exact_probs, FTZ=ftz_exp, num_warps=warps, num_stages=stages)
    return out


def device_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
