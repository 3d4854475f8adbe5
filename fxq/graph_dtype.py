"""The quantized program in another float dtype, converted on the graph (no re-capture).

Three things carry the float32 the model was captured in: the state (parameters, buffers,
constants), the input placeholders' metadata, and literals in the graph (`dtype=torch.float32`
arguments, e.g. HF's softmax upcast and mask casts, and float constants such as
finfo(float32).min). FP8 weight codes stay as they are.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.fx.node import map_aggregate

from .ops import FP8_DTYPE

WIDE_FLOATS = (torch.float32, torch.float64)


def _convert_tensor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype not in WIDE_FLOATS:
        return t  # integers, bools and FP8 codes keep their dtype
    c = t.detach().to(dtype)
    return torch.nn.Parameter(c, requires_grad=False) if isinstance(t, torch.nn.Parameter) else c


def convert_literals(graph: torch.fx.Graph, dtype: torch.dtype) -> int:
    """float32/64 dtype arguments -> dtype; float literals beyond dtype's range clamped to it.

    A clamped constant keeps its meaning (finfo(float32).min as a mask value becomes finfo(fp16).min)
    where an overflow to inf would not: 0 * -inf is NaN. Returns how many literals changed.
    """
    limit = torch.finfo(dtype).max
    changed = 0

    def fix(a):
        nonlocal changed
        if isinstance(a, torch.dtype) and a in WIDE_FLOATS:
            changed += 1
            return dtype
        if isinstance(a, float) and math.isfinite(a) and abs(a) > limit:
            changed += 1
            return math.copysign(limit, a)
        return a

    for node in graph.nodes:
        if node.op == "call_function":
            node.args = map_aggregate(node.args, fix)
            node.kwargs = map_aggregate(node.kwargs, fix)
    return changed


def convert_placeholders(graph: torch.fx.Graph, dtype: torch.dtype) -> int:
    """Float32 input/state placeholders' metadata in dtype (the exporter re-traces from these)."""
    changed = 0
    for node in graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype in WIDE_FLOATS:
            with val.fake_mode:
                node.meta["val"] = val.to(dtype)
            changed += 1
    return changed


def program_in_dtype(ep: torch.export.ExportedProgram, dtype: torch.dtype) -> torch.export.ExportedProgram:
    """A new ExportedProgram computing in `dtype`; `ep` is left as it is (FP8 codes are shared)."""
    if dtype == torch.float32:
        return ep
    if dtype == FP8_DTYPE or not dtype.is_floating_point:
        raise ValueError(f"cannot convert a program to {dtype}")
    gm = torch.fx.GraphModule(ep.graph_module, copy.deepcopy(ep.graph))
    convert_placeholders(gm.graph, dtype)
    convert_literals(gm.graph, dtype)
    gm.recompile()
    state = {k: _convert_tensor(v, dtype) for k, v in ep.state_dict.items()}
    constants = {k: _convert_tensor(v, dtype) if isinstance(v, torch.Tensor) else v for k, v in ep.constants.items()}
    return ep._update(gm, copy.deepcopy(ep.graph_signature), state_dict=state, constants=constants)
