"""Input Hessians H = sum x^T x for the GEMMs whose weights are FP8, collected in the calibration pass.

GPTQ rounding (fxq/accuracy/weight_rounding.py) needs, per GEMM weight, the Hessian of its input. One
observer sits on each distinct GEMM input tensor, so a LayerNorm output read by Q, K and V is
accumulated once and serves all three. An observer passes its input through to the GEMMs (a node
nobody reads would be dropped when the program is run); insert it after the amax observers, so it
sits between them and the GEMMs and leaves their wiring alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from fxq.graph_utils import copy_module_stack
from fxq.conversion.insert import observer_node
from fxq.placement.place import Placement
from fxq.placement.records import GEMM


class HessianObserver(torch.nn.Module):
    """Accumulates H = sum x^T x (float64, [K, K]) and sum x over every token of a GEMM input."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.hessian: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.tokens = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # tokens flattened: [B*T, K]
        if self.hessian is None:
            k = rows.shape[1]
            self.hessian = torch.zeros(k, k, dtype=torch.float64, device=rows.device)
            self.total = torch.zeros(k, dtype=torch.float64, device=rows.device)
        self.hessian += (rows.T @ rows).double()
        self.total += rows.sum(dim=0).double()
        self.tokens += rows.shape[0]
        return x

    def mean(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1)


@dataclass(frozen=True)
class GemmWeight:
    """How one GEMM reads its weight: the input node, and whether the weight is stored [K, N]."""

    gemm: str
    input: str
    transposed: bool  # True for addmm (HF Conv1D) and x @ W: the stored weight is W^T [K, N]


def gemm_weight_layout(node: Node) -> GemmWeight:
    """The GEMM input (as wired now) and weight layout of a GEMM, from the record capture wrote on it."""
    rec = node.meta.get(GEMM)
    if rec is None:
        raise ValueError(f"{node.name} ({node.target}) is not a recorded GEMM with a weight")
    return GemmWeight(node.name, rec.input(node).name, not rec.weight_nk)


def weight_readers(gm: GraphModule, placement: Placement) -> dict[str, list[GemmWeight]]:
    """Weight site key -> the GEMMs reading that weight (several where a weight is tied)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    return {s.key: [gemm_weight_layout(nodes[c]) for c in s.consumers] for s in placement.sites if s.is_weight}


def insert_hessian_observers(gm: GraphModule, placement: Placement) -> dict[str, list[HessianObserver]]:
    """A HessianObserver on each distinct input of a GEMM with an FP8 weight.

    Returns weight site key -> the observers of the GEMMs reading that weight (one, unless the weight
    is tied); GEMMs that share an input share its observer.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    by_input: dict[str, HessianObserver] = {}
    new: dict[str, Node] = {}
    out: dict[str, list[HessianObserver]] = {}
    for key, readers in weight_readers(gm, placement).items():
        for r in readers:
            if r.input not in by_input:
                src = nodes[r.input]
                by_input[r.input] = HessianObserver(r.input)
                with gm.graph.inserting_after(src):
                    new[r.input] = observer_node(gm, f"fxq_observer_hessian_{len(by_input) - 1}",
                                                 by_input[r.input], src, f"hessian:{r.input}")
                new[r.input].meta["val"] = src.meta.get("val")
                copy_module_stack(new[r.input], nodes[r.gemm])
            nodes[r.gemm].replace_input_with(nodes[r.input], new[r.input])
            out.setdefault(key, []).append(by_input[r.input])
    gm.recompile()
    return out


@dataclass(frozen=True)
class InputStats:
    """What the calibration tokens of one weight's GEMM input(s) saw: H = X^T X, mean x, token count."""

    hessian: torch.Tensor  # [K, K] float64
    mean: torch.Tensor  # [K] float64
    tokens: int


def weight_hessians(observers: dict[str, list[HessianObserver]]) -> dict[str, InputStats]:
    """Weight site key -> InputStats summed over the GEMMs that share the weight (tied weights)."""
    out = {}
    for key, obs in observers.items():
        obs = list({id(o): o for o in obs if o.hessian is not None}.values())
        if obs and len({o.hessian.shape for o in obs}) == 1:  # a weight read as W and as W^T: no one H (nearest)
            tokens = sum(o.tokens for o in obs)
            out[key] = InputStats(sum(o.hessian for o in obs), sum(o.total for o in obs) / max(tokens, 1), tokens)
    return out
