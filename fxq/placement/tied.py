"""Tied sites: the O-projection inputs of one FP8 attention block whose output is split by token range.

A joint text+image attention (Flux's and SD3's double-stream blocks) splits BMM2's output into two O-projections.
A split only moves data, so Q/DQs of equal scale on its branches are one Q/DQ on BMM2's output, where TensorRT's FP8
MHA pattern wants it. place() records such groups in Placement.tied; insert_qdq (fxq/conversion/insert.py) gives
each group its largest amax (tie_amax) when it makes the scales; the calibration keeps each site's own.
"""
from __future__ import annotations

import operator
from typing import Sequence

from torch.fx import GraphModule, Node

from fxq import roles as R
from fxq.graph_utils import aten
from fxq.placement.attention import recorded_blocks


# What lies between BMM2 and an O-projection that reads one token range of it: head-merging views, copies, a split.
_SPLIT_PATH = {aten.permute.default, aten.transpose.int, aten.view.default, aten.reshape.default,
               aten._unsafe_view.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
               aten.split.Tensor, aten.split_with_sizes.default, aten.slice.Tensor, aten.narrow.default,
               aten.squeeze.dim, aten.unsqueeze.default, operator.getitem}


def _attention_output_of(x: Node, bmm2s: set[Node], depth: int = 12) -> Node | None:
    """The BMM2 whose output x is a token range of (through _SPLIT_PATH ops only), else None."""
    while isinstance(x, Node) and depth > 0:
        if x in bmm2s:
            return x
        if x.op != "call_function" or x.target not in _SPLIT_PATH or not x.args:
            return None
        x, depth = x.args[0], depth - 1
    return None


def tied_sites(gm: GraphModule, sites: Sequence) -> list[tuple[str, ...]]:
    """Keys of the O-projection input sites (fxq.placement.place.Site) that read one FP8 attention block's BMM2
    through a split, a group per block. A block left in float (head size, fallback, a config without attention
    roles) ties nothing."""
    fp8_bmm2 = {c for s in sites if s.role == R.ATTN_PROBS for c in s.consumers}
    bmm2s = {b.bmm2 for b in recorded_blocks(gm) if b.bmm2.name in fp8_bmm2}
    nodes = {n.name: n for n in gm.graph.nodes}
    by_block: dict[Node, list[str]] = {}
    for s in sites:
        if s.role == R.LINEAR_INPUT:
            bmm2 = _attention_output_of(nodes[s.node], bmm2s)
            if bmm2 is not None:
                by_block.setdefault(bmm2, []).append(s.key)
    return [tuple(keys) for keys in by_block.values() if len(keys) > 1]


def tie_amax(amax: dict[str, float], tied: Sequence[tuple[str, ...]]) -> dict[str, float]:
    """amax with every group of `tied` (Placement.tied) at its largest member's value."""
    out = dict(amax)
    for keys in tied:
        known = [out[k] for k in keys if k in out]
        if known:
            out.update({k: max(known) for k in keys})
    return out
