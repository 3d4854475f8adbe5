"""Find GEMMs with a parameter weight and record each one's form (fxq.placement.records.GemmRecord).

The forms: aten.linear(x, W[N, K], bias) (the weight may be computed from parameters, as MHA's
in_proj split is); HF Conv1D's addmm(bias, x, W[K, N]); and x @ W[K, N] with W a 2-D parameter.
"""
from __future__ import annotations

from torch.fx import GraphModule, Node

from fxq.graph_utils import aten, matmul_flops, state_name, static_dim
from fxq.placement.records import GEMM, GemmRecord, write_records


def gemm_form(node: Node) -> dict | None:
    """GemmRecord's operand fields for a GEMM with a parameter weight, else None."""
    if node.op != "call_function":
        return None
    if node.target is aten.linear.default:
        bias = 2 if len(node.args) > 2 else ("bias" if "bias" in node.kwargs else None)
        w = node.args[1]
        return dict(input_arg=0, weight_arg=1, bias_arg=bias, weight_nk=True, k=static_dim(w, 1), n=static_dim(w, 0))
    if node.target is aten.addmm.default and state_name(node.args[2]) is not None:
        w = node.args[2]  # HF Conv1D: addmm(bias, x, W[in, out])
        return dict(input_arg=1, weight_arg=2, bias_arg=0, weight_nk=False, k=static_dim(w, 0), n=static_dim(w, 1))
    if node.target in (aten.matmul.default, aten.mm.default) and state_name(node.args[1]) is not None \
            and len(node.args[1].meta["val"].shape) == 2:
        w = node.args[1]  # x @ W[in, out]
        return dict(input_arg=0, weight_arg=1, bias_arg=None, weight_nk=False, k=static_dim(w, 0), n=static_dim(w, 1))
    return None


def _gemm_fields(node: Node) -> dict | None:
    form = gemm_form(node)
    if form is None:
        return None
    weight = state_name(node.args[form["weight_arg"]]) or ""
    return dict(node=node.name, weight=weight, flops=matmul_flops(node), **form)


def record_gemms(gm: GraphModule) -> int:
    """Write a GemmRecord on every GEMM node (and clear stale ones). Returns how many were recorded."""
    return write_records(gm, GEMM, "gemm", GemmRecord, _gemm_fields)
