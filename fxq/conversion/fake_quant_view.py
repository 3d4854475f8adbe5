"""A fake-quant view of the calibrated float program: what sensitivity and the fallback search measure.

After calibration the captured program is still float. The view is a runnable copy of it
(`ExportedProgram.module()`: its own graph, the program's tensors shared, never written) with an
fp8_qdq on every activation site and every quantized weight replaced by its dequantized FP8 codes,
the very codes conversion will store. Every quantizer node carries `fxq_site` in its meta, and the
view records which float node each one stands for, so fxq/groups.Switch can leave any of them in
float without a name lookup or a trip back to the source model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.fx import GraphModule, Node

from fxq.conversion import ops
from fxq.graph_utils import state_name
from fxq.conversion.insert import DEQUANT, DEQUANT_AXIS, QDQ, WeightCodes, insert_qdq, state_tensors
from fxq.placement.place import Placement, Site

CodesFor = Callable[[Site, torch.Tensor, float], WeightCodes]


@dataclass
class FakeQuantView:
    module: GraphModule
    float_of: dict[Node, Node]  # quantizer node -> the float node it quantizes


def dequantized(chosen: WeightCodes, dtype: torch.dtype) -> torch.Tensor:
    """The float weight the converted graph computes from `chosen` (the same fxq ops, run once here)."""
    if isinstance(chosen.scale, torch.Tensor):
        return DEQUANT_AXIS(chosen.codes, chosen.scale.detach().float(), chosen.axis, dtype)
    return DEQUANT(chosen.codes, float(chosen.scale), dtype)


def fake_quant_view(ep: torch.export.ExportedProgram, placement: Placement, amax: Mapping[str, float],
                    codes_for: CodesFor) -> FakeQuantView:
    """The view of the float program `ep` with every site of `placement` fake-quantized.

    amax: every site's amax (activations and weights); codes_for(site, w, scale): the weight's codes.
    """
    gm = ep.module()
    insert_qdq(gm, placement, amax)
    float_of = {n: n.args[0] for n in gm.graph.find_nodes(op="call_function", target=QDQ) if "fxq_site" in n.meta}
    state = {state_name(n): n for n in gm.graph.nodes if n.op == "get_attr"}
    program_nodes = {n.name: n for n in ep.graph.nodes}
    nodes = {n.name: n for n in gm.graph.nodes}
    tensors = state_tensors(ep)
    for i, site in enumerate(s for s in placement.sites if s.is_weight):
        name = state_name(program_nodes[site.node])
        w = tensors[name].detach()
        chosen = codes_for(site, w, ops.weight_scale_from_amax(amax[site.key]))
        attr = f"fxq_fake_quant_weight_{i}"
        gm.register_buffer(attr, dequantized(chosen, w.dtype), persistent=False)
        with gm.graph.inserting_after(state[name]):
            q = gm.graph.get_attr(attr)
        q.meta.update({"fxq_site": site.key, "val": state[name].meta.get("val")})
        for c in site.consumers:
            nodes[c].replace_input_with(state[name], q)
        float_of[q] = state[name]
    gm.recompile()
    return FakeQuantView(gm, float_of)
