"""Turn a Placement into graph nodes: observers for calibration, fp8_qdq on activations, FP8 weights.

Everything here edits the captured ExportedProgram's own graph (parameters are placeholders there,
tagged by fxq.capture.program.tag_state), so the program fxq exports is the one it calibrated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument
from torch.fx import GraphModule, Node

from fxq.conversion import ops
from fxq.graph_utils import copy_module_stack, fake_call, state_name
from fxq.calibration.observers import AmaxObserver, make_observer
from fxq.placement.place import Placement, Site
from fxq.placement.tied import tie_amax

QDQ = torch.ops.fxq.fp8_qdq.default
DEQUANT = torch.ops.fxq.fp8_dequant.default
DEQUANT_AXIS = torch.ops.fxq.fp8_dequant_axis.default
OBSERVER = "fxq_observer"  # node.meta tag on every calibration observer node; remove_observers() drops them
FLOAT_WEIGHT = "fxq_float_weight"  # node.meta on an FP8 weight's fp8_dequant: the state name of the float weight


def _insert(gm: GraphModule, sites: list[Site], make: Callable[[Site, Node], Node]) -> int:
    nodes = {n.name: n for n in gm.graph.nodes}
    for site in sites:
        src = nodes[site.node]
        consumers = [nodes[c] for c in site.consumers]
        with gm.graph.inserting_after(src):
            new = make(site, src)
        if "val" not in new.meta:
            new.meta["val"] = src.meta.get("val")
        copy_module_stack(new, consumers[0])
        new.meta["fxq_site"] = site.key
        for c in consumers:
            c.replace_input_with(src, new)
    gm.recompile()
    return len(sites)


def _activation_sites(placement: Placement) -> list[Site]:
    return [s for s in placement.sites if not s.is_weight]


def insert_observers(gm: GraphModule, placement: Placement) -> dict[str, AmaxObserver]:
    """An observer on every calibrated activation site (weights' amax is read directly)."""
    observers: dict[str, AmaxObserver] = {}

    def make(site: Site, src: Node) -> Node:
        observers[site.key] = make_observer(site.key, site.spec)
        return observer_node(gm, f"fxq_observer_{len(observers) - 1}", observers[site.key], src, site.key)

    _insert(gm, [s for s in _activation_sites(placement) if s.fixed_amax is None], make)
    return observers


def observer_node(gm: GraphModule, name: str, observer: torch.nn.Module, src: Node, key: str) -> Node:
    """call_module(observer)(src), inserted at the graph's insert point and tagged for remove_observers()."""
    gm.add_submodule(name, observer)
    node = gm.graph.call_module(name, (src,))
    node.meta[OBSERVER] = key
    return node


def remove_observers(gm: GraphModule) -> int:
    """Take out every node tagged as an observer (amax and Hessian observers alike)."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and OBSERVER in node.meta:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
            removed += 1
    gm.recompile()
    return removed


def weight_layouts(placement: Placement) -> dict[str, bool]:
    """Weight site key -> True where the weight is stored [K, N] (addmm, x @ W), read from its reader's record."""
    return {s.key: placement.weight_is_kn(s.consumers[0]) for s in placement.sites if s.is_weight}


def state_tensors(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    return {**ep.constants, **ep.state_dict}


def weight_amax(ep: torch.export.ExportedProgram, placement: Placement) -> dict[str, float]:
    nodes = {n.name: n for n in ep.graph.nodes}
    tensors = state_tensors(ep)
    out = {}
    for site in placement.sites:
        if site.is_weight:
            w = tensors[state_name(nodes[site.node])].detach()
            out[site.key] = float(w.abs().max().float())
    return out


def insert_qdq(gm: GraphModule, placement: Placement, amax: Mapping[str, float]) -> int:
    """An fp8_qdq node on every activation site, scale = amax / 448, tied sites (Placement.tied) at their
    group's largest amax. Returns how many were inserted."""
    amax = tie_amax(amax, placement.tied)
    sites = _activation_sites(placement)
    missing = [s.key for s in sites if s.fixed_amax is None and s.key not in amax]
    if missing:
        raise KeyError(f"no amax for {len(missing)} sites, e.g. {missing[:3]}")

    def make(site: Site, src: Node) -> Node:
        a = site.fixed_amax if site.fixed_amax is not None else amax[site.key]
        return gm.graph.call_function(QDQ, (src, ops.scale_from_amax(a)))

    return _insert(gm, sites, make)


def _add_buffer(ep: torch.export.ExportedProgram, after: Node, target: str, value: torch.Tensor) -> Node:
    """A new lifted buffer `target` (placeholder + signature entry), placed right after `after`."""
    specs = ep.graph_signature.input_specs
    with ep.graph.inserting_after(after):
        node = ep.graph.placeholder("b_" + target.replace(".", "_"))  # torch names lifted buffers b_*
    with after.meta["val"].fake_mode:  # static shape: no new symbols for export's guards
        node.meta["val"] = torch.empty(value.shape, dtype=value.dtype, device=value.device)
    node.meta["fxq_state"] = target
    index = next(i for i, s in enumerate(specs) if s.arg.name == after.name)
    specs.insert(index + 1, InputSpec(InputKind.BUFFER, TensorArgument(node.name), target, persistent=True))
    ep.state_dict[target] = value
    return node


def _drop_state(ep: torch.export.ExportedProgram, node: Node) -> None:
    """Remove a lifted state input nobody reads any more (frees its tensor)."""
    target = state_name(node)
    specs = ep.graph_signature.input_specs
    specs[:] = [s for s in specs if s.arg.name != node.name]
    ep.state_dict.pop(target, None)
    ep.constants.pop(target, None)
    ep.graph.erase_node(node)


@dataclass(frozen=True)
class WeightCodes:
    """A weight's FP8 codes (its stored layout) and their scale: a float, or 1-D along `axis`."""

    codes: torch.Tensor
    scale: float | torch.Tensor
    axis: int | None = None


def quantize_weights(ep: torch.export.ExportedProgram, placement: Placement, amax: Mapping[str, float],
                     codes_for: Callable[[Site, torch.Tensor, float], torch.Tensor | WeightCodes] | None = None,
                     ) -> int:
    """Store every quantized GEMM weight as FP8 codes, read through fxq.fp8_dequant.

    W (float) -> its E4M3 codes at scale amax/448 (rounded up to a portable value), held as a buffer of the program; the GEMMs read
    fp8_dequant(codes, scale, dtype). The float weight leaves the program (unless something else,
    such as a tied embedding, still reads it). `codes_for(site, w, scale)` picks the codes (default:
    round to nearest): codes at `scale`, or a WeightCodes with its own scale (a 1-D per-channel scale
    becomes a buffer read by fp8_dequant_axis). Returns how many weights were converted.
    """
    nodes = {n.name: n for n in ep.graph.nodes}
    tensors = state_tensors(ep)
    done = 0
    for site in [s for s in placement.sites if s.is_weight]:
        src = nodes[site.node]
        w = tensors[state_name(src)].detach()
        scale = ops.weight_scale_from_amax(amax[site.key])  # one every graph dtype stores exactly
        codes = codes_for(site, w, scale) if codes_for is not None else ops.quantize_to_fp8(w, scale)
        chosen = codes if isinstance(codes, WeightCodes) else WeightCodes(codes, scale)
        buf = _add_buffer(ep, src, f"{state_name(src)}_fp8", chosen.codes)
        if isinstance(chosen.scale, torch.Tensor):
            scale_buf = _add_buffer(ep, buf, f"{state_name(src)}_fp8_scale", chosen.scale.detach().float())
            target, args = DEQUANT_AXIS, (buf, scale_buf, chosen.axis, w.dtype)
        else:
            target, args = DEQUANT, (buf, float(chosen.scale), w.dtype)
        consumers = [nodes[c] for c in site.consumers]
        last_placeholder = list(ep.graph.find_nodes(op="placeholder"))[-1]
        with ep.graph.inserting_after(last_placeholder):
            dq = ep.graph.call_function(target, args)
        dq.meta["val"] = fake_call(target, args)
        copy_module_stack(dq, consumers[0])
        dq.meta["fxq_site"] = site.key
        dq.meta[FLOAT_WEIGHT] = state_name(src)  # what the codes were made from (sensitivity floats it back)
        for c in consumers:
            c.replace_input_with(src, dq)
        if not src.users:
            _drop_state(ep, src)
        done += 1
    ep.graph_module.recompile()
    return done


def own_state(ep: torch.export.ExportedProgram) -> int:
    """Replace the source model's parameters and buffers in the program by copies.

    torch.export shares tensors with the model it captured; a program that owns its state cannot
    change when the user later edits the source model. Returns how many tensors were copied.
    """
    copied = 0
    for name, t in list(ep.state_dict.items()):
        if t.dtype == ops.FP8_DTYPE:
            continue  # created by quantize_weights: already ours
        c = t.detach().clone()
        ep.state_dict[name] = torch.nn.Parameter(c, requires_grad=False) if isinstance(t, torch.nn.Parameter) else c
        copied += 1
    return copied
