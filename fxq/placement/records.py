"""Site records: what capture found at each GEMM, attention block and LayerNorm, kept in node meta.

A matcher (fxq/placement/gemms.py, fxq/placement/attention.py, fxq/placement/matchers.py) finds a site once and writes a small
frozen record into the meta of the node it sits on; placement, insert, Hessian collection, lower and
the PT2E adapter read the record instead of matching again. A record holds argument positions and
names, never Node objects, so it stays true in a copy of the graph (`ExportedProgram.module()`,
`copy.deepcopy`) and after fxq rewires an operand (a Q/DQ or an observer takes the same position).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch.fx import GraphModule, Node

GEMM = "fxq_gemm"  # node.meta key on a GEMM node
ATTENTION = "fxq_attention"  # on an attention block's BMM1, softmax and BMM2 (one record each, `part` differs)
LAYER_NORM = "fxq_layer_norm"  # on a LayerNorm node
RECORDED = "fxq_records"  # graph_module.meta key: how many records the matchers wrote


@dataclass(frozen=True)
class GemmRecord:
    """One GEMM with a parameter weight: linear, HF Conv1D addmm, or x @ W."""

    group: str  # "<module>:gemm" ("#n" appended where a module has several)
    module: str
    node: str  # the GEMM node's name
    input_arg: int  # node.args position of the activation
    weight_arg: int  # node.args position of the weight
    bias_arg: int | str | None  # node.args position (or kwargs name) of the bias, None without one
    weight_nk: bool  # True: the stored weight is [N, K] (linear); False: [K, N] (addmm, x @ W)
    weight: str  # the state name of the weight ("" where it is computed from parameters)
    k: int | None
    n: int | None
    flops: int  # 2*M*N*K per example batch

    def input(self, node: Node):
        return node.args[self.input_arg]

    def weight_of(self, node: Node):
        return node.args[self.weight_arg]

    def bias(self, node: Node):
        if self.bias_arg is None:
            return None
        if isinstance(self.bias_arg, str):
            return node.kwargs.get(self.bias_arg)
        return node.args[self.bias_arg] if len(node.args) > self.bias_arg else None


@dataclass(frozen=True)
class AttentionRecord:
    """One attention block: BMM1 (Q @ K^T) -> ... -> softmax -> ... -> BMM2 (probs @ V).

    Operands by position: Q = bmm1.args[0], K^T = bmm1.args[1], probs = bmm2.args[0], V = bmm2.args[1].
    """

    group: str  # "<module>:attention"
    module: str
    part: str  # which node of the block carries this copy: "bmm1", "softmax" or "bmm2"
    bmm1: str
    softmax: str
    bmm2: str
    head_size: int | None
    flops: int  # both BMMs
    k_gemm: str | None = None  # group of the GEMM whose output alone reaches K through views, if any

    Q_ARG, K_ARG, PROBS_ARG, V_ARG = 0, 1, 0, 1


@dataclass(frozen=True)
class LayerNormRecord:
    group: str  # "<module>:layer_norm"
    module: str


class GroupIds:
    """'<module>:<kind>', then '#1', '#2', ... for a module's further sites of that kind, in graph order."""

    def __init__(self):
        self.seen: Counter = Counter()

    def next(self, module: str, kind: str) -> str:
        base = f"{module}:{kind}"
        self.seen[base] += 1
        return base if self.seen[base] == 1 else f"{base}#{self.seen[base] - 1}"


def require(gm: GraphModule) -> None:
    if RECORDED not in gm.meta:
        raise ValueError("this graph has no fxq site records; fix: capture it with fxq.capture(model, example) or "
                         "fxq.capture.program.capture_program(...), or run fxq.capture.transforms.canonicalize(gm) on it first")


def recorded(gm: GraphModule, key: str) -> list[tuple[Node, object]]:
    """(node, record) for every node carrying a record under `key`, in graph order."""
    return [(n, n.meta[key]) for n in gm.graph.nodes if key in n.meta]


def gemms(gm: GraphModule) -> list[tuple[Node, GemmRecord]]:
    return recorded(gm, GEMM)
