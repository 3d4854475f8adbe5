"""fxq.lower, pass 2: GEMMs whose input and weight both carry an FP8 quantizer -> torch._scaled_mm.

`torch._scaled_mm(x_fp8, W_fp8[N, K].t(), scale_x, scale_w, bias, out_dtype, use_fast_accum=True)`.
The GEMMs are the ones capture recorded (fxq.placement.records.GemmRecord): which argument is the input, the
weight and the bias, and the weight's layout, are read from the record. One quantize node per
quantizer: a LayerNorm output read by Q, K and V is quantized once.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from onnx_post import fp8

from fxq.graph_utils import attr_value
from fxq.lower.ops import DEQUANT, QDQ, fp8_linear, is_qdq, quantize_fp8
from fxq.placement import records

GEMM_MULTIPLE = 16  # cuBLASLt FP8: K and N must be multiples of 16
BUFFER = "fxq_lower_buffer"  # node.meta tag on the get_attr nodes of the tensors lower adds (kept as they are)


class Buffers:
    """FP8 codes and fp32 scale scalars registered on the graph module, read through tagged get_attr nodes."""

    def __init__(self, gm: GraphModule, device: torch.device):
        self.gm, self.device, self.n = gm, device, 0

    def add(self, value: torch.Tensor, before: Node, kind: str) -> Node:
        name = f"fxq_{kind}_{self.n}"
        self.n += 1
        self.gm.register_buffer(name, value.to(self.device))
        with self.gm.graph.inserting_before(before):
            node = self.gm.graph.get_attr(name)
        node.meta[BUFFER] = kind
        return node

    def scale(self, scale: float, dtype: torch.dtype, before: Node) -> Node:
        # Rounded to the graph dtype first: the ONNX/TensorRT graph stores the scale in fp16/bf16 too.
        return self.add(stored_scale_tensor(scale, dtype), before, "scale")


def stored_scale_tensor(scale: float, dtype: torch.dtype) -> torch.Tensor:
    """The scale as the graph stores it (fp8.stored_scale, rounded to dtype), as the fp32 0-d tensor lower uses."""
    return torch.tensor(fp8.stored_scale(scale, dtype), dtype=torch.float32)


def weight_fp8(gm: GraphModule, node, dtype: torch.dtype) -> tuple[torch.Tensor, float] | None:
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
        return attr_value(gm, node.args[0].target).detach(), float(node.args[1])
    if node.target is not QDQ:
        return None
    w, scale = attr_value(gm, node.args[0].target).detach(), float(node.args[1])
    return fp8.quantize(w, fp8.stored_scale(scale, dtype)), scale


def replace_with_call(node: Node, fn, args: tuple) -> Node:
    """Put fn(*args) in `node`'s place; it keeps the module stack (reports) and the value (later passes)."""
    g = node.graph
    with g.inserting_before(node):
        new = g.call_function(fn, args)
    new.meta.update({key: node.meta[key] for key in ("nn_module_stack", "val") if key in node.meta})
    node.replace_all_uses_with(new)
    g.erase_node(node)
    return new


def _extra_kwargs(node: Node, rec: records.GemmRecord) -> bool:
    """addmm's beta/alpha (or anything but the bias) would be lost on _scaled_mm."""
    return any(k != rec.bias_arg for k in node.kwargs)


def lower_gemms(gm: GraphModule, dtype: torch.dtype, buffers: Buffers) -> tuple[int, int, int]:
    """Returns (GEMMs on _scaled_mm, GEMMs left in float, activation quantize nodes made)."""
    g = gm.graph
    quantized: dict[Node, Node] = {}  # fp8_qdq node -> its quantize_fp8 node (shared by all its GEMMs)
    scale_of: dict[Node, Node] = {}
    fp8 = flt = 0
    for node, rec in records.gemms(gm):
        x, bias = rec.input(node), rec.bias(node)
        wq = weight_fp8(gm, rec.weight_of(node), dtype) if is_qdq(x) and not _extra_kwargs(node, rec) else None
        if wq is None:
            flt += 1
            continue
        codes, w_scale = wq
        codes = codes if rec.weight_nk else codes.t().contiguous()  # [N, K]
        n, k = codes.shape
        if n % GEMM_MULTIPLE or k % GEMM_MULTIPLE:
            flt += 1
            continue
        if x not in quantized:
            scale_of[x] = buffers.scale(float(x.args[1]), dtype, x)
            with g.inserting_after(x):
                quantized[x] = g.call_function(quantize_fp8, (x.args[0], scale_of[x]))
        w_node = buffers.add(codes, node, "fp8_weight")
        sw = buffers.scale(w_scale, dtype, node)
        replace_with_call(node, fp8_linear, (quantized[x], w_node, scale_of[x], sw, bias, dtype))
        fp8 += 1
    g.eliminate_dead_code()
    gm.recompile()
    return fp8, flt, len(quantized)
