"""fxq.lower, passes 3 and 4: the remaining Q/DQ as fusable ATen ops, and the whole graph in fp16/bf16.

decompose_qdq: every other `fxq.fp8_qdq` (attention q/k/v, GEMMs left in float) becomes plain ATen
ops, so Inductor fuses it into the op that produces its input (a custom op is opaque to it).
cast_graph: parameters, constants, float inputs and the fp32 literals of the capture (softmax
upcasts, full(dtype=float32), finfo(float32).min masks) move to fp16/bf16.
"""
from __future__ import annotations

import math

import torch
from torch.fx import GraphModule

from fxq.conversion import ops
from fxq.graph_utils import attr_value, set_attr_value
from fxq.lower.gemms import BUFFER, Buffers
from fxq.lower.ops import DEQUANT, QDQ, fake_quant, fp8_linear, quantize_fp8, to_dtype

DTYPES = (torch.float16, torch.bfloat16)
_WIDE_FLOATS = (torch.float32, torch.float64)


def decompose_qdq(gm: GraphModule, dtype: torch.dtype, buffers: Buffers) -> int:
    """Pass 3: every fp8_qdq left becomes fake_quant's ATen ops; FP8 weights of float GEMMs are dequantized.

    Returns how many fxq ops were replaced.
    """
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
        w = ops.fp8_dequant(attr_value(gm, n.args[0].target).detach(), float(n.args[1]), dtype)
        new = buffers.add(w, n, "weight")
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
    gm.recompile()
    return len(nodes) + len(weights)


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
    reads = gm.graph.find_nodes(op="get_attr")
    ours = {n.target for n in reads if BUFFER in n.meta}  # FP8 codes and fxq's fp32 scales stay as they are
    for target in dict.fromkeys(n.target for n in reads if n.target not in ours):
        t = attr_value(gm, target)
        if isinstance(t, torch.Tensor) and t.dtype in _WIDE_FLOATS + DTYPES and t.dtype != dtype:
            set_attr_value(gm, target, t.detach().clamp(info.min, info.max).to(dtype))
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
