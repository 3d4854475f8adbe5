"""Transpose chains: two Transposes in a row become one (or none)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..gs_utils import nodes_of, only_consumer, replace_uses


def fuse_transpose_pairs(graph: gs.Graph) -> int:
    """Transpose(p1) -> Transpose(p2)  ==>  Transpose(p1[p2]); dropped when that is the identity.

    torch's k.transpose(1, 2).transpose(-1, -2) exports as two Transposes before BMM1.
    """
    fired = 0
    for first in nodes_of(graph, "Transpose"):
        if not first.outputs or "perm" not in first.attrs:
            continue
        second = only_consumer(first.outputs[0])
        if second is None or second.op != "Transpose" or "perm" not in second.attrs or first.outputs[0] in graph.outputs:
            continue
        p1, p2 = list(first.attrs["perm"]), list(second.attrs["perm"])
        perm = [p1[i] for i in p2]
        if perm == sorted(perm):
            replace_uses(second.outputs[0], first.inputs[0], graph)
            second.outputs.clear()
        else:
            second.inputs[0] = first.inputs[0]
            second.attrs["perm"] = perm
        first.outputs.clear()
        fired += 1
    return fired
