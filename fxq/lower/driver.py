"""fxq.lower: run a QuantizedModel on real FP8 kernels in PyTorch (torch._scaled_mm, SDPA, Inductor).

`lower(qm)` copies qm's quantized graph and rewrites the copy in four passes (one module each); each
returns how often it fired (kept in `LoweredModel.stats`). The passes find attention blocks and GEMMs
from the records capture wrote into node meta (fxq.placement.records), which the copy keeps:

1. `fuse_attention` (fxq/lower/attention.py): BMM1 -> [scale, mask, casts] -> softmax -> [casts, dropout,
   probs Q/DQ] -> BMM2 becomes one `scaled_dot_product_attention` (flash / cuDNN on a GPU), or with
   attention="fp8" one `torch.ops.fxq.fp8_attention` (fxq/kernels: q, k, v and P in E4M3 as the ONNX graph). Q already carries the
   attention scale (capture moved it there), so SDPA gets scale=1.0 (when Q's Q/DQ is dropped, the
   default, that multiply is folded into SDPA's scale instead). Provably zero additive masks
   (transformers 5.x ViT builds one) are dropped; real masks are kept. The softmax output is NOT
   quantized here (SDPA keeps probs in FP16); TensorRT's graph quantizes it at 1/448.
2. `lower_gemms` (fxq/lower/gemms.py): a GEMM whose input and weight both carry an FP8 quantizer becomes
   `torch._scaled_mm(x_fp8, W_fp8[N, K].t(), scale_x, scale_w, bias, out_dtype, use_fast_accum=True)`.
   One quantize node per quantizer: a LayerNorm output read by Q, K and V is quantized once.
3. `decompose_qdq` (fxq/lower/dtype.py): every other `fxq.fp8_qdq` (attention q/k/v, GEMMs left in float)
   becomes plain ATen ops, so Inductor fuses it into the op that produces its input (a custom op is opaque to it).
4. `cast_graph` (fxq/lower/dtype.py): parameters, constants and float inputs move to fp16/bf16; dtype
   literals follow fxq/conversion/graph_dtype.py's rule, shared with the ONNX export: the model's own dtype
   becomes fp16/bf16, its deliberate upcasts (a BF16 model's fp32 timestep embedding, fp64 RoPE) stay.

Scales are fp32 0-d device buffers: no .item(), no host sync, safe to capture in a CUDA graph. What
the lowered graph calls (quantize_fp8, fake_quant, fp8_linear) is in fxq/lower/ops.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from fxq.conversion.graph_dtype import captured_dtype
from fxq.errors import FxqError
from fxq.lower.attention import fuse_attention
from fxq.lower.attention_choice import KERNEL, MODES, AttentionResult
from fxq.lower.convs import lower_convs
from fxq.placement import records
from fxq.lower.dtype import DTYPES, cast_graph, cast_literals, decompose_qdq  # noqa: F401  (importable from here)
from fxq.lower.gemms import GEMM_MULTIPLE, Buffers, lower_gemms, weight_fp8  # noqa: F401
from fxq.lower.ops import (DEQUANT, FP8_ATTENTION, QDQ, fake_quant, fp8_linear, quantize_fp8,  # noqa: F401
                           quantize_values, to_dtype)


class LowerError(FxqError, ValueError):
    """fxq.lower was given something it cannot lower."""


# ---- the result ----

@dataclass(frozen=True)
class LowerStats:
    dtype: torch.dtype
    gemms_fp8: int  # GEMMs now on torch._scaled_mm
    gemms_float: int  # GEMMs left in dtype (a float operand, K or N not a multiple of 16, weight form unknown)
    activation_quantizers: int  # quantize kernels feeding the FP8 GEMMs (shared LayerNorm outputs count once)
    attention_fused: int  # attention blocks now one scaled_dot_product_attention or FP8 attention call
    attention_fp8_qkv: int  # SDPA blocks that keep q/k/v fake-quantized (keep_qkv_qdq)
    attention_kept: int  # blocks left as matmul -> softmax -> matmul (see attention_reasons)
    zero_masks_dropped: int
    qdq_decomposed: int  # fp8_qdq nodes rewritten as ATen ops
    literals_cast: int  # graph nodes whose dtype/float/device literals were rewritten
    attention_reasons: tuple[str, ...] = ()
    convs_fp8: int = 0  # patch-embedding and 1x1 convs now on torch._scaled_mm (fxq/lower/convs.py)
    convs_float: int = 0  # recorded convs left as convs (float, or fake-quantized operands)
    # Per fused block: (module, "fp16" | "fp8", reason); an fp8 block's reason is "kernel..." where the Triton
    # kernel runs, "reference: <why>" where the op runs the plain-torch reference (CPU, head dim, no Triton).
    attention_choices: tuple[tuple[str, str, str], ...] = ()

    @property
    def attention_fp8(self) -> int:
        """Blocks on the FP8 attention op (kernel or reference)."""
        return sum(path == "fp8" for _, path, _ in self.attention_choices)

    def attention_counts(self) -> dict[tuple[str, str], int]:
        """How many blocks took each (path, reason): the per-reason summary of attention_choices."""
        counts: dict[tuple[str, str], int] = {}
        for _, path, reason in self.attention_choices:
            key = (path, reason.split(":")[0] if reason.startswith(KERNEL) else reason)
            counts[key] = counts.get(key, 0) + 1
        return counts


class LoweredModel(torch.nn.Module):
    """What fxq.lower returns: a GraphModule of real FP8 kernels, plus the pass counts."""

    def __init__(self, graph_module: GraphModule, stats: LowerStats):
        super().__init__()
        self.graph_module = graph_module
        self.stats = stats

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)


# ---- the driver ----

def _attention_mode(attention, keep_qkv_qdq: bool) -> str | None:
    """The attention mode lower runs: "fp16", "fp8", "auto", or None (no re-fusion)."""
    if not isinstance(attention, bool) and attention not in MODES:
        raise LowerError(f"fxq.lower: attention={attention!r} is not a mode; fix: pass attention='fp16' (SDPA), "
                         "'fp8' (the FP8 attention kernel, the ONNX graph's numerics), 'auto' (FP8 where measured "
                         "faster on this GPU) or False (no re-fusion)")
    mode = {True: "fp16", False: None}[attention] if isinstance(attention, bool) else attention
    if keep_qkv_qdq and mode != "fp16":
        raise LowerError(f"fxq.lower: keep_qkv_qdq=True applies to attention='fp16' only, got attention={attention!r}; "
                         "fix: drop keep_qkv_qdq (attention='fp8' quantizes q, k, v itself)")
    return mode


def _check(qm, dtype) -> None:
    from fxq.quantize import QuantizedModel

    if not isinstance(qm, QuantizedModel):
        raise LowerError(f"fxq.lower takes the fxq.QuantizedModel that fxq.quantize returns, got {type(qm).__name__}; "
                         "fix: qm = fxq.quantize(model, example_inputs, calib_data); fast = fxq.lower(qm)")
    if dtype not in DTYPES:
        raise LowerError(f"fxq.lower builds fp16 or bf16 models, got dtype={dtype}; "
                         "fix: pass dtype=torch.float16 or dtype=torch.bfloat16")


def _graph_device(gm: GraphModule) -> torch.device:
    t = next(iter(gm.parameters()), None)
    if t is None:
        t = next(iter(gm.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def lower(qm, dtype: torch.dtype = torch.float16, *, attention: str | bool = "fp16",
          keep_qkv_qdq: bool = False, convs: bool = True) -> LoweredModel:
    """A module that runs like `qm` on real FP8 kernels: torch._scaled_mm GEMMs, SDPA attention.

    Built on the device qm's parameters are on (inputs must live there too; float inputs are cast
    to `dtype`). Run it eagerly, or torch.compile it (Inductor then fuses each activation quantize
    into the LayerNorm/GELU/add that produces it) and capture it in a CUDA graph.
    attention: "fp16" (default; True means it too) re-fuses each attention block into SDPA (fast; probs
    stay FP16). "fp8": blocks whose q, k, v carry quantizers call the FP8 attention op with their scales
    and the probs scale (q, k, v, P in E4M3: the ONNX graph's numerics; the Triton kernel on Hopper, the
    plain-torch reference elsewhere). "auto": FP8 only where the kernel measured faster than the best
    SDPA backend for the block's shape on this GPU; fp16 on a CPU. `.stats.attention_choices` says what
    each block got and why. False keeps matmul -> softmax -> matmul with every Q/DQ as plain ops.
    keep_qkv_qdq (attention="fp16" only): False (default) runs attention fully in FP16 inside SDPA; True keeps q/k/v
    fake-quantized (closer to qm and TensorRT, but three extra memory-bound kernels per block:
    ViT-base batch 256 1.18x instead of 1.30x of FP16 on an H200, same probe accuracy).
    convs: True (default) runs patch-embedding and 1x1 convs with FP8 operands as torch._scaled_mm GEMMs;
    False keeps every conv a conv with fake-quantized operands (to measure what the GEMM form buys).
    """
    _check(qm, dtype)
    mode = _attention_mode(attention, keep_qkv_qdq)
    gm = copy.deepcopy(qm.graph_module)  # qm stays as it is
    device = _graph_device(gm)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise LowerError(f"FP8 GEMMs need an Ada or Hopper GPU (compute capability 8.9+), {device} is "
                         f"{torch.cuda.get_device_capability(device)}; fix: lower on such a GPU (or on CPU for tests)")
    captured = captured_dtype(gm.parameters())  # before any pass: the dtype literals of the model's own dtype carry
    buffers = Buffers(gm, device)
    att = fuse_attention(gm, mode, dtype, buffers, keep_qkv_qdq) if mode else AttentionResult(reasons=["attention=False"])
    kept = qm.placement.attention_blocks - att.fused
    fp8, flt, quantizers = lower_gemms(gm, dtype, buffers)
    convs_fp8, convs_float = lower_convs(gm, dtype, buffers) if convs else (0, sum(1 for _ in records.convs(gm)))
    decomposed = decompose_qdq(gm, dtype, buffers)
    literals = cast_graph(gm, dtype, captured, device)
    gm.graph.eliminate_dead_code()
    _drop_unread_tensors(gm)
    gm.graph.lint()
    gm.recompile()
    stats = LowerStats(dtype, fp8, flt, quantizers, att.fused, att.fp8_qkv, kept, att.zero_masks_dropped, decomposed,
                       literals, tuple(att.reasons), convs_fp8=convs_fp8, convs_float=convs_float,
                       attention_choices=tuple(att.choices))
    return LoweredModel(gm, stats)


def _drop_unread_tensors(gm: GraphModule) -> int:
    """Free parameters no get_attr reads any more (the fp32 weights now held as FP8 codes)."""
    read = {n.target for n in gm.graph.find_nodes(op="get_attr")}
    dropped = 0
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in read:
            *path, leaf = name.split(".")
            mod = gm.get_submodule(".".join(path)) if path else gm
            mod._parameters.pop(leaf, None)
            mod._buffers.pop(leaf, None)
            dropped += 1
    return dropped
