"""fxq.lower, passes 3 and 4: the remaining Q/DQ as fusable ATen ops, and the whole graph in fp16/bf16.

decompose_qdq: every other `fxq.fp8_qdq` (attention q/k/v, GEMMs left in float) becomes plain ATen
ops, so Inductor fuses it into the op that produces its input (a custom op is opaque to it).
cast_graph: parameters, constants and float inputs move to fp16/bf16; dtype literals follow the rule
the ONNX export follows (fxq/conversion/graph_dtype.py): the model's own dtype becomes fp16/bf16, its deliberate
upcasts (a BF16 model's fp32 timestep embedding, fp64 RoPE table) stay.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule
from torch.fx.node import map_aggregate

from fxq.conversion import ops
from fxq.conversion.graph_dtype import convert_literals
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
        with g.inserting_before(n):
            new = g.call_function(fake_quant, (n.args[0], s))
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


def device_literals(gm: GraphModule, device: torch.device) -> int:
    """device= literals -> device (a graph captured on CPU, lowered on the GPU). Returns how many nodes changed."""
    def fix(v):
        return device if isinstance(v, torch.device) and v != device else v

    changed = 0
    for node in [n for n in gm.graph.nodes if n.op == "call_function"]:
        args, kwargs = map_aggregate(node.args, fix), map_aggregate(node.kwargs, fix)
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed += 1
    return changed


def cast_literals(gm: GraphModule, dtype: torch.dtype, captured: torch.dtype, device: torch.device | None = None) -> int:
    """Dtype literals by graph_dtype's rule (the one the ONNX export follows), float64 upcasts kept;
    mask sentinels clamped, other literals beyond dtype's range refused; device literals -> device.
    Returns how many literals and nodes changed."""
    changed = convert_literals(gm.graph, dtype, captured, widest=torch.float64)
    changed += device_literals(gm, device) if device is not None else 0
    gm.recompile()
    return changed


def cast_graph(gm: GraphModule, dtype: torch.dtype, captured: torch.dtype, device: torch.device | None = None) -> int:
    """The graph in `dtype`: float tensors read by get_attr, float inputs, and literals (see cast_literals:
    the model's deliberate fp32/fp64 upcasts stay).

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
    return cast_literals(gm, dtype, captured, device)
