"""Einsums that only reorder dims become permutes at capture.

ONNX's Einsum has no BF16 type, so a BF16 export holding one is invalid (SD3's unpatchify is
`einsum("nhwpqc->nchpwq", x)`). A one-operand einsum whose output names each input dim once is a permute:
the same values, the same strides, and a Transpose in ONNX at any dtype.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule

aten = torch.ops.aten


def _permutation(equation: str) -> list[int] | None:
    eq = equation.replace(" ", "")
    if "->" not in eq or "..." in eq or "," in eq:
        return None
    lhs, rhs = eq.split("->")
    if len(set(lhs)) != len(lhs) or sorted(lhs) != sorted(rhs):
        return None
    return [lhs.index(c) for c in rhs]


def einsum_permutes_to_permute(gm: GraphModule) -> int:
    """Rewrite every permutation einsum of `gm` as aten.permute. Returns how many it rewrote."""
    fired = 0
    for node in list(gm.graph.nodes):
        if node.target is not aten.einsum.default or len(node.args[1]) != 1:
            continue
        perm = _permutation(node.args[0])
        if perm is None:
            continue
        with gm.graph.inserting_before(node):
            permute = gm.graph.call_function(aten.permute.default, (node.args[1][0], perm))
        permute.meta.update(node.meta)
        node.replace_all_uses_with(permute)
        gm.graph.erase_node(node)
        fired += 1
    if fired:
        gm.recompile()
    return fired
