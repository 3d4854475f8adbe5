"""fxq.lower: run a QuantizedModel on real FP8 kernels in PyTorch (torch._scaled_mm, SDPA, Inductor).

`lower(qm)` copies qm's quantized graph and rewrites the copy in four passes; each returns how often
it fired (kept in `LoweredModel.stats`):

1. `fuse_attention` (fxq/lower_attention.py): BMM1 -> [scale, mask, casts] -> softmax -> [casts, dropout, probs Q/DQ] -> BMM2
   becomes one `scaled_dot_product_attention` (flash / cuDNN on a GPU). Q already carries the
   attention scale (placement moved it there), so SDPA gets scale=1.0 (when Q's Q/DQ is dropped, the
   default, that multiply is folded into SDPA's scale instead). Provably zero additive masks
   (transformers 5.x ViT builds one) are dropped; real masks are kept. The softmax output is NOT
   quantized here (SDPA keeps probs in FP16); TensorRT's graph quantizes it at 1/448.
2. `lower_gemms`: a GEMM whose input and weight both carry an FP8 quantizer becomes
   `torch._scaled_mm(x_fp8, W_fp8[N, K].t(), scale_x, scale_w, bias, out_dtype, use_fast_accum=True)`.
   One quantize node per quantizer: a LayerNorm output read by Q, K and V is quantized once.
3. `decompose_qdq`: every other `fxq.fp8_qdq` (attention q/k/v, GEMMs left in float) becomes plain
   ATen ops, so Inductor fuses it into the op that produces its input (a custom op is opaque to it).
4. `cast_graph`: parameters, constants, float inputs and the fp32 literals of the capture (softmax
   upcasts, full(dtype=float32), finfo(float32).min masks) move to fp16/bf16.

Scales are fp32 0-d device buffers: no .item(), no host sync, safe to capture in a CUDA graph.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from . import ops
from .errors import FxqError
from .graph_utils import aten
from .lower_attention import QDQ, _attr, _is_qdq, fuse_attention  # noqa: F401  (pass 1 lives there)

DEQUANT = torch.ops.fxq.fp8_dequant.default
DTYPES = (torch.float16, torch.bfloat16)
GEMM_MULTIPLE = 16  # cuBLASLt FP8: K and N must be multiples of 16
_WIDE_FLOATS = (torch.float32, torch.float64)


class LowerError(FxqError, ValueError):
    """fxq.lower was given something it cannot lower."""


# ---- what the lowered graph calls (plain PyTorch, so Dynamo and Inductor trace straight through) ----

def quantize_fp8(x: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """x / scale, saturated, rounded to E4M3: the QuantizeLinear half of fxq.fp8_qdq.

    A multiply by the fp32 reciprocal, not a divide: cheaper inside the fused kernels (GELU + quantize went
    from 281 to 270 us per call at ViT-base batch 256 on an H200). It can move a value that sits exactly on
    a rounding boundary by one code.
    """
    return torch.clamp(x.float() * inv_scale, -ops.FP8_MAX, ops.FP8_MAX).to(ops.FP8_DTYPE)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """fxq.fp8_qdq as ATen ops Inductor can fuse (scales: fp32 0-d tensors)."""
    return (quantize_fp8(x, inv_scale).float() * scale).to(x.dtype)


def fp8_linear(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor,
               bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(..., K) FP8 codes @ W[N, K]^T -> (..., N) in out_dtype, on one _scaled_mm (A row-major, B column-major)."""
    a = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch._scaled_mm(a, w.t(), scale_x, scale_w, bias=bias, out_dtype=out_dtype, use_fast_accum=True)
    return out.reshape(*x.shape[:-1], w.shape[0])


def to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


# ---- the result ----

@dataclass(frozen=True)
class LowerStats:
    dtype: torch.dtype
    gemms_fp8: int  # GEMMs now on torch._scaled_mm
    gemms_float: int  # GEMMs left in dtype (a float operand, K or N not a multiple of 16, weight form unknown)
    activation_quantizers: int  # quantize kernels feeding the FP8 GEMMs (shared LayerNorm outputs count once)
    attention_fused: int  # attention blocks now one scaled_dot_product_attention
    attention_fp8_qkv: int  # of those, how many keep q/k/v fake-quantized
    attention_kept: int  # blocks left as matmul -> softmax -> matmul (see attention_reasons)
    zero_masks_dropped: int
    qdq_decomposed: int  # fp8_qdq nodes rewritten as ATen ops
    literals_cast: int  # graph nodes whose dtype/float/device literals were rewritten
    attention_reasons: tuple[str, ...] = ()


class LoweredModel(torch.nn.Module):
    """What fxq.lower returns: a GraphModule of real FP8 kernels, plus the pass counts."""

    def __init__(self, graph_module: GraphModule, stats: LowerStats):
        super().__init__()
        self.graph_module = graph_module
        self.stats = stats

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)


# ---- small graph helpers ----

def _set_attr(gm: GraphModule, target: str, value: torch.Tensor) -> None:
    *path, name = target.split(".")
    mod = gm.get_submodule(".".join(path)) if path else gm
    if name in mod._parameters:
        mod._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    elif name in mod._buffers:
        mod._buffers[name] = value
    else:
        setattr(mod, name, value)


class _Buffers:
    """FP8 codes and fp32 scale scalars registered on the graph module, read through get_attr nodes."""

    def __init__(self, gm: GraphModule, device: torch.device):
        self.gm, self.device, self.n = gm, device, 0

    def add(self, value: torch.Tensor, before: Node, kind: str) -> Node:
        name = f"fxq_{kind}_{self.n}"
        self.n += 1
        self.gm.register_buffer(name, value.to(self.device))
        with self.gm.graph.inserting_before(before):
            return self.gm.graph.get_attr(name)

    def scale(self, scale: float, dtype: torch.dtype, before: Node, inverse: bool = False) -> Node:
        # Rounded to the graph dtype first: the ONNX/TensorRT graph stores the scale in fp16/bf16 too.
        s = ops.round_scale(scale, dtype).double()
        return self.add((1.0 / s if inverse else s).float(), before, "inv_scale" if inverse else "scale")


def _weight_fp8(gm: GraphModule, node, dtype: torch.dtype) -> tuple[torch.Tensor, float] | None:
    """(FP8 codes shaped like the stored weight, scale) for a quantized GEMM weight, else None.

    fxq.quantize holds GEMM weights as FP8 codes: get_attr(W_fp8) -> fp8_dequant(W_fp8, scale, dtype),
    taken as they are. A weight fake-quantized in float (a PT2E graph, or one computed from
    parameters: get_attr(W) -> fp8_qdq(W, scale)) gets the codes QuantizeLinear makes of W with the
    scale rounded to `dtype`, as the ONNX graph stores it.
    """
    if not isinstance(node, Node) or node.op != "call_function" or not isinstance(node.args[0], Node) \
            or node.args[0].op != "get_attr":
        return None
    if node.target is DEQUANT:
        return _attr(gm, node.args[0].target).detach(), float(node.args[1])
    if node.target is not QDQ:
        return None
    w, scale = _attr(gm, node.args[0].target).detach(), float(node.args[1])
    inv = (1.0 / ops.round_scale(scale, dtype).double()).float().to(w.device)
    return quantize_fp8(w, inv), scale


def _gemm(node: Node):
    """(x, weight, bias, weight_is_nk) for the GEMM forms placement quantizes, else None."""
    if node.op != "call_function":
        return None
    if node.target is aten.linear.default:
        return node.args[0], node.args[1], (node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")), True
    if node.target is aten.addmm.default and len(node.args) == 3 and not node.kwargs:
        return node.args[1], node.args[2], node.args[0], False  # HF Conv1D: addmm(bias, x, W[K, N])
    if node.target in (aten.matmul.default, aten.mm.default) and isinstance(node.args[1], Node):
        w = node.args[1].args[0] if node.args[1].op == "call_function" and node.args[1].args else node.args[1]
        if isinstance(w, Node) and w.op == "get_attr":
            return node.args[0], node.args[1], None, False  # x @ W[K, N]
    return None


# ---- pass 2: GEMMs -> torch._scaled_mm ----

def lower_gemms(gm: GraphModule, dtype: torch.dtype, buffers: _Buffers) -> tuple[int, int, int]:
    """Returns (GEMMs on _scaled_mm, GEMMs left in float, activation quantize nodes made)."""
    g = gm.graph
    quantized: dict[Node, Node] = {}  # fp8_qdq node -> its quantize_fp8 node (shared by all its GEMMs)
    scale_of: dict[Node, Node] = {}
    fp8 = flt = 0
    for node in list(g.nodes):
        gemm = _gemm(node)
        if gemm is None:
            continue
        x, w, bias, nk = gemm
        wq = _weight_fp8(gm, w, dtype) if _is_qdq(x) else None
        if wq is None:
            flt += 1
            continue
        codes, w_scale = wq
        codes = codes if nk else codes.t().contiguous()  # [N, K]
        n, k = codes.shape
        if n % GEMM_MULTIPLE or k % GEMM_MULTIPLE:
            flt += 1
            continue
        if x not in quantized:
            scale_of[x] = buffers.scale(float(x.args[1]), dtype, x)
            inv = buffers.scale(float(x.args[1]), dtype, x, inverse=True)
            with g.inserting_after(x):
                quantized[x] = g.call_function(quantize_fp8, (x.args[0], inv))
        w_node = buffers.add(codes, node, "fp8_weight")
        sw = buffers.scale(w_scale, dtype, node)
        with g.inserting_before(node):
            new = g.call_function(fp8_linear, (quantized[x], w_node, scale_of[x], sw, bias, dtype))
        new.meta.update({key: node.meta[key] for key in ("nn_module_stack", "val") if key in node.meta})
        node.replace_all_uses_with(new)
        g.erase_node(node)
        fp8 += 1
    g.eliminate_dead_code()
    gm.recompile()
    return fp8, flt, len(quantized)


# ---- pass 3: the remaining fp8_qdq -> fusable ATen ops ----

def decompose_qdq(gm: GraphModule, dtype: torch.dtype, buffers: _Buffers) -> int:
    g = gm.graph
    nodes = list(g.find_nodes(op="call_function", target=QDQ))
    for n in nodes:
        s = buffers.scale(float(n.args[1]), dtype, n)
        inv = buffers.scale(float(n.args[1]), dtype, n, inverse=True)
        with g.inserting_before(n):
            new = g.call_function(fake_quant, (n.args[0], s, inv))
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
    # FP8 weights of GEMMs left in float: dequantized once here, not on every forward.
    weights = [n for n in g.find_nodes(op="call_function", target=DEQUANT) if n.args[0].op == "get_attr"]
    for n in weights:
        w = ops.fp8_dequant(_attr(gm, n.args[0].target).detach(), float(n.args[1]), dtype)
        new = buffers.add(w, n, "weight")
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
    gm.recompile()
    return len(nodes) + len(weights)


# ---- pass 4: the graph in fp16/bf16 ----

def cast_literals(gm: GraphModule, dtype: torch.dtype, device: torch.device | None = None) -> int:
    """fp32/fp64 dtype literals -> dtype; float literals clamped to dtype's finite range; device literals -> device.

    The captured graph is fp32: softmax(dtype=float32) upcasts, to(float32), full(..., dtype=float32)
    and finfo(float32).min masks. In fp16 that min is -inf, and 0 * -inf is NaN, hence the clamp.
    Returns how many nodes changed. (fxq's scale arguments are tiny and never clamped.)
    """
    big = torch.finfo(dtype).max

    def lit(v):
        if isinstance(v, torch.dtype):
            return dtype if v in _WIDE_FLOATS else v
        if isinstance(v, float):
            return max(-big, min(big, v)) if not math.isnan(v) else v
        if isinstance(v, torch.device) and device is not None and v != device:
            return device
        if isinstance(v, (list, tuple)):
            return type(v)(lit(a) for a in v)
        return v

    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target in (QDQ, quantize_fp8, fake_quant, fp8_linear):
            continue
        args = tuple(lit(a) for a in node.args)
        kwargs = {k: lit(v) for k, v in node.kwargs.items()}
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed += 1
    gm.recompile()
    return changed


def cast_graph(gm: GraphModule, dtype: torch.dtype, device: torch.device | None = None) -> int:
    """The whole graph in `dtype`: literals (see cast_literals), float tensors read by get_attr, float inputs.

    fxq's own buffers (FP8 codes, fp32 scales) stay as they are. Returns cast_literals' count.
    """
    info = torch.finfo(dtype)
    for target in dict.fromkeys(n.target for n in gm.graph.find_nodes(op="get_attr")):
        t = _attr(gm, target)
        if isinstance(t, torch.Tensor) and t.dtype in _WIDE_FLOATS + DTYPES and t.dtype != dtype \
                and not target.startswith("fxq_"):  # FP8 codes and fxq's fp32 scales stay as they are
            _set_attr(gm, target, t.detach().clamp(info.min, info.max).to(dtype))
    g = gm.graph
    for ph in list(g.find_nodes(op="placeholder")):
        val = ph.meta.get("val")
        if not (isinstance(val, torch.Tensor) and val.is_floating_point()):
            continue
        with g.inserting_after(ph):
            cast = g.call_function(to_dtype, (ph, dtype))
        ph.replace_all_uses_with(cast, delete_user_cb=lambda u: u is not cast and u.op != "call_module")
    gm.recompile()
    return cast_literals(gm, dtype, device)


# ---- the driver ----

def _check(qm, dtype) -> None:
    from .quantize import QuantizedModel

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


def lower(qm, dtype: torch.dtype = torch.float16, *, attention: bool = True, keep_qkv_qdq: bool = False) -> LoweredModel:
    """A module that runs like `qm` on real FP8 kernels: torch._scaled_mm GEMMs, SDPA attention.

    Built on the device qm's parameters are on (inputs must live there too; float inputs are cast
    to `dtype`). Run it eagerly, or torch.compile it (Inductor then fuses each activation quantize
    into the LayerNorm/GELU/add that produces it) and capture it in a CUDA graph.
    attention: re-fuse attention into SDPA (fast; probs stay FP16). False keeps matmul -> softmax ->
    matmul with every Q/DQ, probs at 1/448 included: qm's (and TensorRT's) numerics, at math-path speed.
    keep_qkv_qdq: False (default) runs attention fully in FP16 inside SDPA; True keeps q/k/v
    fake-quantized (closer to qm and TensorRT, but three extra memory-bound kernels per block:
    ViT-base batch 256 1.18x instead of 1.30x of FP16 on an H200, same probe accuracy).
    """
    _check(qm, dtype)
    gm = copy.deepcopy(qm.graph_module)  # qm stays as it is
    device = _graph_device(gm)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise LowerError(f"FP8 GEMMs need an Ada or Hopper GPU (compute capability 8.9+), {device} is "
                         f"{torch.cuda.get_device_capability(device)}; fix: lower on such a GPU (or on CPU for tests)")
    buffers = _Buffers(gm, device)
    fused, fp8_qkv, dropped, reasons = fuse_attention(gm, keep_qkv_qdq) if attention else (0, 0, 0, ["attention=False"])
    kept = qm.placement.attention_blocks - fused
    fp8, flt, quantizers = lower_gemms(gm, dtype, buffers)
    decomposed = decompose_qdq(gm, dtype, buffers)
    literals = cast_graph(gm, dtype, device)
    gm.graph.eliminate_dead_code()
    _drop_unread_tensors(gm)
    gm.graph.lint()
    gm.recompile()
    stats = LowerStats(dtype, fp8, flt, quantizers, fused, fp8_qkv, kept, dropped, decomposed, literals, tuple(reasons))
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
