"""fxq.lower's attention choice per block: "fp16" (SDPA), "fp8" (the FP8 attention op), or "auto".

"auto" puts a block on FP8 only where the Triton kernel runs and was measured faster, for that block's
shape on this GPU, than the best SDPA backend (flash, cuDNN, memory-efficient; the fastest FP16
backend differs per shape, results/gpu_fp8_attention.md). Each shape is measured once per process, at
lower time, with CUDA events around bursts of calls on random inputs of that shape (a few ms each). On a CPU, or where the
kernel cannot run, "auto" picks fp16. The choice and its reason are recorded per block.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch.fx import Node

from fxq.kernels import EXACT_PROBS_DEFAULT, P_SCALE, kernel_unsupported_reason
from fxq.kernels.fp8_attention import value_rows_padded

MODES = ("fp16", "fp8", "auto")
KERNEL = "kernel"  # the reason recorded for a block the Triton kernel runs


@dataclass
class AttentionResult:
    fused: int = 0  # blocks now one SDPA or FP8 attention call
    fp8_qkv: int = 0  # fp16 blocks that keep q/k/v fake-quantized (keep_qkv_qdq)
    zero_masks_dropped: int = 0
    reasons: list[str] = field(default_factory=list)  # blocks kept as matmul -> softmax -> matmul, and why
    choices: list[tuple[str, str, str]] = field(default_factory=list)  # (module, "fp16" | "fp8", reason)


def hint_shape(node) -> tuple[int, ...] | None:
    """The (example) shape of the tensor a node's first input holds: symbolic sizes at their hints."""
    src = node.args[0] if isinstance(node, Node) and node.args and isinstance(node.args[0], Node) else node
    val = src.meta.get("val") if isinstance(src, Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else int(d.node.hint) for d in val.shape)


def _probe(shape, device, dtype):
    return torch.empty(shape, dtype=dtype, device=device)


def choose(mode: str, quantized: bool, q_shape, v_shape, mask_kind: str, dtype: torch.dtype,
           device: torch.device) -> tuple[str, str]:
    """(path, reason) for one block. q_shape, v_shape: (B, H, T, D) at the example's sizes."""
    if mode == "fp16":
        return "fp16", "attention='fp16'"
    if not quantized:
        return "fp16", "q, k, v carry no FP8 quantizer"
    if q_shape is None or v_shape is None or len(q_shape) != 4:
        return ("fp8", "reference: shape unknown") if mode == "fp8" else ("fp16", "auto: shape unknown")
    why = kernel_unsupported_reason(_probe((1, 1, 1, q_shape[-1]), device, dtype),
                                    _probe((1, 1, 1, v_shape[-1]), device, dtype), dtype)
    if mode == "fp8":
        return "fp8", KERNEL if why is None else f"reference: {why}"
    if why is not None:
        return "fp16", f"auto: {why}"
    fp8_ms, sdpa_ms, backend = measure(tuple(q_shape), tuple(v_shape), bool(mask_kind), dtype, device)
    if fp8_ms < sdpa_ms:
        return "fp8", f"{KERNEL}: auto measured {fp8_ms:.3f} ms vs {backend} {sdpa_ms:.3f} ms"
    return "fp16", f"auto: FP8 kernel {fp8_ms:.3f} ms, {backend} {sdpa_ms:.3f} ms"


def _time_ms(fn, calls: int = 10, rounds: int = 5) -> float:
    """Median over `rounds` of the GPU time of `calls` back-to-back calls, per call: launches queue ahead, as
    they do inside a model's forward, so the host-side cost of one launch is not counted against a kernel."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return sorted(times)[len(times) // 2]


@functools.lru_cache(maxsize=64)
def measure(q_shape, v_shape, masked: bool, dtype, device) -> tuple[float, float, str]:
    """(FP8 kernel ms, best SDPA ms, its backend) for one shape: medians of CUDA-event timings."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    b, h, t, d = q_shape
    q, k, v = (torch.randn((b, h, t, d), generator=g, device=device, dtype=dtype) for _ in range(3))
    mask = torch.zeros((b, 1, 1, t), device=device, dtype=dtype) if masked else None
    codes = [x.to(torch.float8_e4m3fn) for x in (q, k, v)]
    codes[2] = value_rows_padded(v, lambda x: x.to(torch.float8_e4m3fn))  # the layout lower's quantize_values makes
    fp8_ms = _time_ms(lambda: torch.ops.fxq.fp8_attention(*codes, 1.0, 1.0, 1.0, mask, False, d ** -0.5, P_SCALE,
                                                          EXACT_PROBS_DEFAULT, dtype))
    best = (float("inf"), "none")
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                ms = _time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        except RuntimeError:  # that backend does not take this shape, dtype or mask
            continue
        best = min(best, (ms, backend.name.lower()))
    return fp8_ms, best[0], best[1]
