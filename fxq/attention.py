"""Find attention blocks by graph structure and give them the shape TensorRT's FP8 MHA wants.

An attention block is BMM1 (Q @ K^T) -> [scale, mask, bias, casts, views] -> softmax ->
[casts, dropout] -> BMM2 (probs @ V). Nothing here knows model families: every spelling HF uses
(scale by mul or div, before or after the matmul, additive or boolean masks, position bias)
reduces to that chain.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from .graph_utils import aten, constant_scalar, copy_module_stack, module_path, static_dim

SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
MATMUL = {aten.matmul.default, aten.bmm.default}
SCALE_OPS = {aten.mul.Tensor, aten.div.Tensor}
_CASTS = {aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.type_as.default}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.clone.default,
          aten.contiguous.default, aten.alias.default}
_MASKS = {aten.add.Tensor, aten.sub.Tensor, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf,
          aten.masked_fill.Scalar, aten.masked_fill.Tensor}
BETWEEN_BMM1_AND_SOFTMAX = SCALE_OPS | _CASTS | _VIEWS | _MASKS
BETWEEN_SOFTMAX_AND_BMM2 = _CASTS | _VIEWS | {aten.dropout.default, aten.masked_fill.Scalar,
                                                aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}


@dataclass
class AttentionBlock:
    bmm1: Node
    softmax: Node
    bmm2: Node

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


def move_scale_to_q(gm: GraphModule, blocks: list[AttentionBlock]) -> int:
    """Rewrite (Q @ K^T) * c into (Q * c) @ K^T (and likewise /c). Returns how many moved.

    The attn.q quantizer then sees Q*c, so it is calibrated on exactly the tensor it quantizes.
    """
    moved = 0
    for b in blocks:
        if len(b.bmm1.users) != 1:
            continue
        user = next(iter(b.bmm1.users))
        if user.target not in SCALE_OPS or user.args[0] is not b.bmm1:
            continue
        c = constant_scalar(user.args[1])
        if c is None:
            continue
        q = b.bmm1.args[0]
        with gm.graph.inserting_before(b.bmm1):
            scaled = gm.graph.call_function(user.target, (q, c))
        scaled.meta["val"] = q.meta.get("val")
        copy_module_stack(scaled, b.bmm1)
        b.bmm1.args = (scaled, *b.bmm1.args[1:])
        user.replace_all_uses_with(b.bmm1)
        const = user.args[1]
        gm.graph.erase_node(user)
        if isinstance(const, Node) and not const.users:
            gm.graph.erase_node(const)
        moved += 1
    gm.recompile()
    return moved
