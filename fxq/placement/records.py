"""Site records: what capture found at each GEMM, attention block, convolution and LayerNorm, kept in node meta.

A matcher (fxq/placement/gemms.py, fxq/placement/attention.py, fxq/placement/matchers.py) finds a site once and writes a small
frozen record into the meta of the node it sits on; placement, insert, Hessian collection, lower and
the PT2E adapter read the record instead of matching again. A record holds argument positions and
names, never Node objects, so it stays true in a copy of the graph (`ExportedProgram.module()`,
`copy.deepcopy`) and after fxq rewires an operand (a Q/DQ or an observer takes the same position).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from torch.fx import GraphModule, Node

from fxq.graph_utils import module_path

GEMM = "fxq_gemm"  # node.meta key on a GEMM node
ATTENTION = "fxq_attention"  # on an attention block's BMM1, softmax and BMM2 (one record each, `part` differs)
LAYER_NORM = "fxq_layer_norm"  # on a LayerNorm node
CONV = "fxq_conv"  # on a convolution node
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
class ConvRecord:
    """One forward convolution (1-D, 2-D or 3-D) with a parameter weight [out, in/groups, *kernel]."""

    group: str  # "<module>:conv" ("#n" appended where a module has several)
    module: str
    node: str
    input_arg: int
    weight_arg: int
    bias_arg: int | None
    weight: str  # the state name of the weight
    dims: int  # 1, 2 or 3
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str  # or "same" / "valid"
    dilation: tuple[int, ...]
    flops: int  # 2 * output elements * in_channels/groups * kernel volume, per example batch

    def input(self, node: Node):
        return node.args[self.input_arg]

    def weight_of(self, node: Node):
        return node.args[self.weight_arg]

    @property
    def is_patch_embedding(self) -> bool:
        """kernel == stride, no padding, groups 1: a GEMM over non-overlapping patches."""
        if self.groups != 1 or self.kernel != self.stride or any(d != 1 for d in self.dilation):
            return False
        return self.padding == "valid" or (not isinstance(self.padding, str) and not any(self.padding))


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


def write_records(gm: GraphModule, key: str, kind: str, record: type,
                  fields_of: Callable[[Node], dict | None]) -> int:
    """The loop every single-node matcher shares: clear stale `key` records, then put
    record(group, module, **fields_of(node)) on each node it matches (None: no match). Returns how many."""
    ids = GroupIds()
    written = 0
    for node in gm.graph.nodes:
        node.meta.pop(key, None)
        fields = fields_of(node)
        if fields is None:
            continue
        mod = module_path(node)
        node.meta[key] = record(ids.next(mod, kind), mod, **fields)
        written += 1
    return written


def require(gm: GraphModule) -> None:
    if RECORDED not in gm.meta:
        raise ValueError("this graph has no fxq site records; fix: capture it with fxq.capture(model, example) or "
                         "fxq.capture.program.capture_program(...), or run fxq.capture.transforms.canonicalize(gm) on it first")


def recorded(gm: GraphModule, key: str) -> list[tuple[Node, object]]:
    """(node, record) for every node carrying a record under `key`, in graph order."""
    return [(n, n.meta[key]) for n in gm.graph.nodes if key in n.meta]


def gemms(gm: GraphModule) -> list[tuple[Node, GemmRecord]]:
    return recorded(gm, GEMM)


def convs(gm: GraphModule) -> list[tuple[Node, ConvRecord]]:
    return recorded(gm, CONV)
