"""The quantized program in another float dtype, converted on the graph (no re-capture).

Three things carry the dtype the model was captured in (float32, or a model's own FP16/BF16): the
state (parameters, buffers, constants), the input placeholders' metadata, and literals in the
graph (`dtype=` arguments, e.g. HF's softmax upcast and mask casts, and float constants such as
finfo(float32).min). State and inputs become the asked dtype. Literals follow one rule, shared by
the ONNX export and fxq.lower (`literal_dtype`):

    the dtype the model was captured in (its float parameters' dtype) becomes the asked dtype;
    an explicit upcast to a wider float stays as written (capped at `widest`).

A BF16 diffusion transformer computes its timestep embedding (`t * 1000`: in BF16 the step at 1000
is 4) and its RoPE table in fp32/fp64 on purpose; turning those literals into BF16 drifted a lowered
Flux to cosine 0.86 against its fake-quant model. In an fp32 capture an upcast cannot be told apart
from the model's own dtype, so fp32 literals become the asked dtype there. FP8 codes stay as they are.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.fx.node import map_aggregate

from fxq.errors import InputError
from fxq.conversion.ops import FP8_DTYPE, FP8_MAX

# Literals at or below this are mask sentinels (finfo(float32).min, -1e30): "never attend here".
MASK_SENTINEL = -1e30
# Ops that build or apply a mask from a scalar: the only places a sentinel is clamped.
_MASK_OPS = {"where", "masked_fill", "full", "full_like", "new_full", "fill", "scalar_tensor", "add"}
# Ops whose integer arguments are values, not sizes: `x * 100000` overflows FP16 as `x * 1e5` does.
_VALUE_OPS = {"mul", "add", "sub", "rsub", "div", "where", "masked_fill", "clamp", "clamp_min", "clamp_max", "pow"}


_WIDTH = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}


def captured_dtype(tensors) -> torch.dtype:
    """The float dtype the model was captured in: the one most float parameter elements hold (FP8 codes
    aside); float32 for a model without float parameters."""
    count: dict[torch.dtype, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype in _WIDTH:
            count[t.dtype] = count.get(t.dtype, 0) + t.numel()
    return max(count, key=count.__getitem__) if count else torch.float32


def literal_dtype(dt: torch.dtype, dtype: torch.dtype, captured: torch.dtype, widest: torch.dtype) -> torch.dtype:
    """What a float dtype literal of the graph becomes (see the module docstring); other dtypes stay."""
    if dt not in _WIDTH:
        return dt  # integers, bools, FP8
    if _WIDTH[dt] <= _WIDTH[captured]:
        return dtype
    return dt if _WIDTH[dt] <= _WIDTH[widest] else widest


def _in_island(node: torch.fx.Node, captured: torch.dtype) -> bool:
    """True when the node computes in a float wider than the captured dtype (an upcast the rule keeps)."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and _WIDTH.get(val.dtype, 0) > _WIDTH[captured]


def _converts(dt: torch.dtype, dtype: torch.dtype) -> bool:
    return dt.is_floating_point and dt != dtype and dt != FP8_DTYPE


def _convert_tensor(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not _converts(t.dtype, dtype):
        return t  # integers, bools and FP8 codes keep their dtype
    c = t.detach().to(dtype)
    return torch.nn.Parameter(c, requires_grad=False) if isinstance(t, torch.nn.Parameter) else c


def _op_name(node: torch.fx.Node) -> str:
    packet = getattr(node.target, "_overloadpacket", None)
    return getattr(packet, "__name__", str(node.target))


def convert_literals(graph: torch.fx.Graph, dtype: torch.dtype, captured: torch.dtype,
                     widest: torch.dtype = torch.float32) -> int:
    """Float dtype arguments by `literal_dtype`; mask sentinels beyond dtype's range clamped to its min.

    captured: the model's own dtype (`captured_dtype`). widest: the widest float kept for an upcast
    (float32 for ONNX: TensorRT has no float64; fxq.lower keeps float64).
    A clamped sentinel keeps its meaning (finfo(float32).min as a mask value becomes finfo(fp16).min)
    where an overflow to -inf would not: 0 * -inf is NaN. Any other literal beyond the range is
    refused: clamping `x * 1e6` to `x * 65504` would change the math in silence. Nodes that compute
    in a kept upcast are not range-checked against dtype. Returns how many literals changed.
    """
    limit = torch.finfo(dtype).max
    changed = 0

    for node in [n for n in graph.nodes if n.op == "call_function"]:
        is_mask_op = _op_name(node) in _MASK_OPS
        values = () if _in_island(node, captured) else (float, int) if _op_name(node) in _VALUE_OPS else (float,)

        def fix(a):
            nonlocal changed
            if isinstance(a, torch.dtype) and literal_dtype(a, dtype, captured, widest) != a:
                changed += 1
                return literal_dtype(a, dtype, captured, widest)
            if values and isinstance(a, values) and not isinstance(a, bool) and math.isfinite(a) and abs(a) > limit:
                if not (is_mask_op and a <= MASK_SENTINEL):
                    raise InputError(
                        f"the constant {a:g} in {_op_name(node)} (graph node '{node.name}') does not fit {dtype} "
                        f"(largest {limit:g}); fxq will not clamp it, which would change the result; "
                        "fix: export in torch.float32 or torch.bfloat16 (dtype=... / --dtype fp32|bf16)")
                changed += 1
                return -limit if isinstance(a, float) else -int(limit)
            return a

        node.args = map_aggregate(node.args, fix)
        node.kwargs = map_aggregate(node.kwargs, fix)
    return changed


def convert_placeholders(graph: torch.fx.Graph, dtype: torch.dtype) -> int:
    """Float input/state placeholders' metadata in dtype (the exporter re-traces from these)."""
    changed = 0
    for node in graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and _converts(val.dtype, dtype):
            with val.fake_mode:
                node.meta["val"] = val.to(dtype)
            changed += 1
    return changed


def _float_dtypes(ep: torch.export.ExportedProgram) -> set[torch.dtype]:
    """The float dtypes (FP8 aside) the program's inputs and state hold."""
    vals = [n.meta.get("val") for n in ep.graph.find_nodes(op="placeholder")]
    vals += [v for v in ep.constants.values() if isinstance(v, torch.Tensor)]
    return {v.dtype for v in vals if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != FP8_DTYPE}


def _copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A deep copy with the original node names. Graph.deepcopy renames placeholders that shadow
    Python builtins (`input` -> `input_1`, nn.Sequential's argument), which no longer matches the
    graph signature; nothing is added to the copy, so restoring the names cannot collide."""
    new = copy.deepcopy(graph)
    for old_node, new_node in zip(graph.nodes, new.nodes):
        new_node.name = old_node.name
    return new


def program_in_dtype(ep: torch.export.ExportedProgram, dtype: torch.dtype) -> torch.export.ExportedProgram:
    """A new ExportedProgram computing in `dtype`; `ep` is left as it is (FP8 codes are shared)."""
    if dtype == FP8_DTYPE or not dtype.is_floating_point:
        raise ValueError(f"cannot convert a program to {dtype}")
    if _float_dtypes(ep) <= {dtype}:
        return ep  # already in dtype: literals follow the model's own dtype
    captured = captured_dtype(ep.state_dict[name] for name in ep.graph_signature.parameters)
    gm = torch.fx.GraphModule(ep.graph_module, _copy_graph(ep.graph))
    convert_placeholders(gm.graph, dtype)
    convert_literals(gm.graph, dtype, captured)
    gm.recompile()
    state = {k: _convert_tensor(v, dtype) for k, v in ep.state_dict.items()}
    constants = {k: _convert_tensor(v, dtype) if isinstance(v, torch.Tensor) else v for k, v in ep.constants.items()}
    return ep._update(gm, copy.deepcopy(ep.graph_signature), state_dict=state, constants=constants)


def scale_range(ep: torch.export.ExportedProgram, dtype: torch.dtype) -> list[str]:
    """Check every FP8 scale against what `dtype` can store, before the graph is written.

    A scale beyond dtype's max (amax > max * 448, e.g. a calibration file with amax 1e308) would be
    stored clamped: the file would compute something other than the calibration says. That is an
    error naming the tensor. A scale below dtype's smallest normal is stored as that normal (coarser
    steps for a tiny tensor, never 0): returned as warnings naming the tensors.
    """
    from fxq.conversion.insert import DEQUANT, DEQUANT_AXIS, QDQ

    info = torch.finfo(dtype)
    small = []
    for node in [n for t in (QDQ, DEQUANT, DEQUANT_AXIS) for n in ep.graph.find_nodes(op="call_function", target=t)]:
        if node.target in (QDQ, DEQUANT):
            scales = [float(node.args[1])]
        elif node.target == DEQUANT_AXIS:
            sig = ep.graph_signature
            name = node.args[1].name
            buf = sig.inputs_to_buffers.get(name) or sig.inputs_to_lifted_tensor_constants.get(name)
            t = ep.state_dict.get(buf, ep.constants.get(buf)) if buf else None
            scales = t.detach().double().flatten().tolist() if isinstance(t, torch.Tensor) else []
        site = node.meta.get("fxq_site", node.name)
        if max(scales, default=0.0) > info.max:
            raise InputError(f"the FP8 scale of '{site}' is {max(scales):.3g}, beyond {dtype}'s largest value "
                             f"{info.max:.5g} (its amax is {max(scales) * FP8_MAX:.3g}); the graph cannot hold it; fix: "
                             "calibrate again on data without such outliers"
                             + (", or export in torch.float32/bfloat16" if dtype == torch.float16 else ""))
        if 0 < min(scales, default=1.0) < info.tiny:
            small.append(site)
    return small
