"""Find attention blocks by graph structure and record each one (fxq.placement.records.AttentionRecord).

An attention block is BMM1 (Q @ K^T) -> [scale, mask, bias, casts, views] -> softmax ->
[casts, dropout] -> BMM2 (probs @ V). Nothing here knows model families: every spelling HF uses
(scale by mul or div, before or after the matmul, additive or boolean masks, position bias)
reduces to that chain. Capture gives blocks the shape TensorRT's FP8 MHA wants first (fxq/capture/transforms.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch.fx import GraphModule, Node

from fxq.graph_utils import aten, matmul_flops, module_path, static_dim
from fxq.placement.records import ATTENTION, GEMM, AttentionRecord, GroupIds

SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
MATMUL = {aten.matmul.default, aten.bmm.default}
SCALE_OPS = {aten.mul.Tensor, aten.div.Tensor}
CASTS = {aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.type_as.default}
VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default,
         aten.contiguous.default, aten.alias.default}
_MASKS = {aten.add.Tensor, aten.sub.Tensor, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf,
          aten.masked_fill.Scalar, aten.masked_fill.Tensor}
BETWEEN_BMM1_AND_SOFTMAX = SCALE_OPS | CASTS | VIEWS | _MASKS
BETWEEN_SOFTMAX_AND_BMM2 = CASTS | VIEWS | {aten.dropout.default, aten.masked_fill.Scalar,
                                              aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}


@dataclass
class AttentionBlock:
    bmm1: Node
    softmax: Node
    bmm2: Node
    record: AttentionRecord | None = None  # set when read from the graph's records

    @property
    def module(self) -> str:
        return module_path(self.bmm1)

    @property
    def head_size(self) -> int | None:
        return static_dim(self.bmm1.args[0], -1)


def _find_bmm1(start: Node, depth: int = 10) -> Node | None:
    """Walk back from the softmax input through scale/mask/cast/view ops to the Q @ K^T matmul."""
    if not isinstance(start, Node) or depth == 0:
        return None
    if start.target in MATMUL:
        return start
    if start.target not in BETWEEN_BMM1_AND_SOFTMAX:
        return None
    for arg in start.args:  # args[0] first: the score path, not the mask path
        found = _find_bmm1(arg, depth - 1)
        if found is not None:
            return found
    return None


def _find_bmm2(softmax: Node) -> Node | None:
    node = softmax
    for _ in range(8):
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if user.target in MATMUL:
            return user if user.args[0] is node else None
        if user.target not in BETWEEN_SOFTMAX_AND_BMM2 or user.args[0] is not node:
            return None
        node = user
    return None


def find_attention_blocks(gm: GraphModule) -> list[AttentionBlock]:
    blocks = []
    for sm in gm.graph.nodes:
        if sm.op != "call_function" or sm.target not in SOFTMAX:
            continue
        bmm1, bmm2 = _find_bmm1(sm.args[0]), _find_bmm2(sm)
        if bmm1 is not None and bmm2 is not None and bmm1 is not bmm2:
            blocks.append(AttentionBlock(bmm1, sm, bmm2))
    return blocks


_PROJECTION_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int,
                     aten.permute.default, aten.contiguous.default, aten.clone.default, aten.t.default}


def _projection(operand: Node) -> Node | None:
    """The GEMM whose output alone becomes `operand`, through single-reader views and transposes."""
    node = operand
    while isinstance(node, Node) and node.op == "call_function" and node.target in _PROJECTION_VIEWS:
        if len(node.users) != 1:
            return None
        node = node.args[0]
    if isinstance(node, Node) and GEMM in node.meta and len(node.users) == 1:
        return node
    return None


def record_attention(gm: GraphModule) -> int:
    """Write an AttentionRecord on each block's BMM1, softmax and BMM2 (and clear stale ones).

    Runs after fxq.placement.gemms.record_gemms, so a block can name its K projection. Returns how many blocks.
    """
    for node in gm.graph.nodes:
        node.meta.pop(ATTENTION, None)
    ids = GroupIds()
    blocks = find_attention_blocks(gm)
    for b in blocks:
        k_proj = _projection(b.bmm1.args[AttentionRecord.K_ARG])
        rec = AttentionRecord(ids.next(b.module, "attention"), b.module, "", b.bmm1.name, b.softmax.name, b.bmm2.name,
                              b.head_size, matmul_flops(b.bmm1) + matmul_flops(b.bmm2),
                              k_proj.meta[GEMM].group if k_proj is not None else None)
        for part in ("bmm1", "softmax", "bmm2"):
            getattr(b, part).meta[ATTENTION] = dataclasses.replace(rec, part=part)
    return len(blocks)


def recorded_blocks(gm: GraphModule) -> list[AttentionBlock]:
    """The attention blocks capture recorded in `gm`, in softmax order as found (a read of node meta, no matching)."""
    parts: dict[str, dict[str, Node]] = {}
    order: list[str] = []
    for node in gm.graph.nodes:
        rec = node.meta.get(ATTENTION)
        if rec is not None:
            parts.setdefault(rec.group, {})[rec.part] = node
            order += [rec.group] if rec.part == "softmax" else []
    return [AttentionBlock(p["bmm1"], p["softmax"], p["bmm2"], p["bmm1"].meta[ATTENTION])
            for p in map(parts.__getitem__, order) if len(p) == 3]
