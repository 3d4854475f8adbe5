"""Turn a Placement into graph nodes: observers for calibration, fp8_qdq ops for the result."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch.fx import GraphModule, Node

from . import ops  # noqa: F401  (registers torch.ops.fxq.fp8_qdq)
from .graph_utils import copy_module_stack
from .observers import AmaxObserver, make_observer
from .placement import Placement, Site

QDQ = torch.ops.fxq.fp8_qdq.default
_OBSERVER_PREFIX = "fxq_observer_"


def _insert(gm: GraphModule, placement: Placement, make: Callable[[Site, Node], Node]) -> int:
    nodes = {n.name: n for n in gm.graph.nodes}
    for site in placement.sites:
        src = nodes[site.node]
        consumers = [nodes[c] for c in site.consumers]
        with gm.graph.inserting_after(src):
            new = make(site, src)
        new.meta["val"] = src.meta.get("val")
        copy_module_stack(new, consumers[0])
        new.meta["fxq_site"] = site.key
        for c in consumers:
            c.replace_input_with(src, new)
    gm.recompile()
    return len(placement.sites)


def insert_observers(gm: GraphModule, placement: Placement) -> dict[str, AmaxObserver]:
    """An observer on every activation site; weights need none (their amax is read directly)."""
    observers: dict[str, AmaxObserver] = {}
    activations = Placement(sites=[s for s in placement.sites if not s.is_weight and s.fixed_amax is None])

    def make(site: Site, src: Node) -> Node:
        name = f"{_OBSERVER_PREFIX}{len(observers)}"
        observers[site.key] = make_observer(site.key, site.spec)
        gm.add_submodule(name, observers[site.key])
        return gm.graph.call_module(name, (src,))

    _insert(gm, activations, make)
    return observers


def remove_observers(gm: GraphModule) -> int:
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(_OBSERVER_PREFIX):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
            removed += 1
    gm.recompile()
    return removed


def weight_amax(gm: GraphModule, placement: Placement) -> dict[str, float]:
    nodes = {n.name: n for n in gm.graph.nodes}
    out = {}
    for site in placement.sites:
        if site.is_weight:
            w = _get_attr(gm, nodes[site.node].target)
            out[site.key] = float(w.detach().abs().max().float())
    return out


def _get_attr(gm: GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def insert_qdq(gm: GraphModule, placement: Placement, amax: Mapping[str, float]) -> int:
    """An fp8_qdq node on every site, scale = amax / 448. Returns how many were inserted."""
    missing = [s.key for s in placement.sites if s.fixed_amax is None and s.key not in amax]
    if missing:
        raise KeyError(f"no amax for {len(missing)} sites, e.g. {missing[:3]}")

    def make(site: Site, src: Node) -> Node:
        a = site.fixed_amax if site.fixed_amax is not None else amax[site.key]
        return gm.graph.call_function(QDQ, (src, ops.scale_from_amax(a)))

    return _insert(gm, placement, make)
