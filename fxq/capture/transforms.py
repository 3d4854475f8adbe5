"""Transforms: the canonical graph fxq places on, made once at capture.

Placement, insert and every back end only read the graph; the rewrites they rely on happen here,
after torch.export and the SDPA decomposition (fxq/capture/program.py runs `canonicalize`), and in the PT2E
adapter's transform_for_annotation. Each rewrite returns how many times it fired; running them on a
graph they already shaped fires none. The last step records every site (fxq/placement/matchers.py).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from torch.fx import GraphModule, Node

from fxq.capture.einsum import einsum_permutes_to_permute
from fxq.placement.attention import CASTS, SCALE_OPS, VIEWS, AttentionBlock, find_attention_blocks
from fxq.graph_utils import aten, constant_scalar, copy_module_stack, depends_on_input, fake_call, hoist_before, \
    shape_of, static_dim
from fxq.placement.matchers import record_sites

COUNTS = "fxq_transforms"  # graph_module.meta key: TransformCounts summed over every canonicalize run


@dataclass(frozen=True)
class TransformCounts:
    views_moved_before_softmax: int = 0
    scales_moved_to_q: int = 0
    einsums_to_permute: int = 0

    def __add__(self, other: "TransformCounts") -> "TransformCounts":
        return TransformCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def canonicalize(gm: GraphModule) -> TransformCounts:
    """Probs views above the softmax, attention scales onto Q, permuting einsums as permutes, then every site
    recorded in node meta.

    Returns what this run did; gm.meta[COUNTS] keeps the sum over runs (what capture did, for reports).
    """
    permutes = einsum_permutes_to_permute(gm)  # first: an einsum-written K^T or head merge is then a permute
    views = move_views_before_softmax(gm, find_attention_blocks(gm))
    scales = move_scale_to_q(gm, find_attention_blocks(gm))  # found again: the softmax nodes may be new
    done = TransformCounts(views, scales, permutes)
    gm.meta[COUNTS] = gm.meta.get(COUNTS, TransformCounts()) + done
    record_sites(gm)
    return done


def _movable_scale(c, q: Node):
    """The constant that scales the scores, if it can scale Q instead; else None.

    A Python number or constant 0-d tensor always can. So can a constant tensor (computed from
    parameters only, e.g. Swin v2's per-head exp(logit_scale) of shape [heads, 1, 1]) that is 1 in
    the last two dims, so it scales whole score rows, and that broadcasts into Q's shape.
    """
    if constant_scalar(c) is not None:
        return c
    shape, q_shape = shape_of(c), shape_of(q)
    if shape is None or q_shape is None or depends_on_input(c) or len(shape) > len(q_shape):
        return None
    if any(d != 1 for d in shape[-2:]):
        return None
    aligned = q_shape[len(q_shape) - len(shape):]
    return c if all(d == 1 or d == qd for d, qd in zip(shape, aligned)) else None


def move_scale_to_q(gm: GraphModule, blocks: list[AttentionBlock]) -> int:
    """Rewrite (Q @ K^T) * c into (Q * c) @ K^T (and likewise /c). Returns how many moved.

    The attn.q quantizer then sees Q*c, so it is calibrated on exactly the tensor it quantizes.
    """
    moved = 0
    for b in blocks:
        if len(b.bmm1.users) != 1:
            continue
        user = next(iter(b.bmm1.users))
        if user.target not in SCALE_OPS:
            continue
        if user.args[0] is b.bmm1:
            c = user.args[1]
        elif user.target is aten.mul.Tensor and user.args[1] is b.bmm1:  # c * scores
            c = user.args[0]
        else:
            continue
        q = b.bmm1.args[0]
        if _movable_scale(c, q) is None:
            continue
        if isinstance(c, Node):
            hoist_before(c, b.bmm1)  # a constant computed after BMM1 (Swin v2 does) must exist before it
        with gm.graph.inserting_before(b.bmm1):
            scaled = gm.graph.call_function(user.target, (q, c))
        scaled.meta["val"] = fake_call(user.target, (q, c)) if isinstance(c, Node) else q.meta.get("val")
        copy_module_stack(scaled, b.bmm1)
        b.bmm1.args = (scaled, *b.bmm1.args[1:])
        user.replace_all_uses_with(b.bmm1)
        gm.graph.erase_node(user)
        if isinstance(c, Node) and not c.users:
            gm.graph.erase_node(c)
        moved += 1
    gm.recompile()
    return moved


_UNARY = CASTS | {aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default}


def move_views_before_softmax(gm: GraphModule, blocks: list[AttentionBlock]) -> int:
    """softmax(x) -> view -> BMM2  ==>  softmax(view(x)) -> BMM2, when the view keeps the last dim.

    TensorRT wants Softmax -> Q/DQ -> BMM2 with nothing between (DeBERTa reshapes 4-D probs to 3-D
    there). A view that keeps the softmax axis (the last) commutes with softmax; per-tensor Q/DQ
    does not care. Unary ops on the way (casts, dropout) stay after the softmax.
    """
    moved = 0
    for b in blocks:
        sm = b.softmax
        rank = len(shape_of(sm) or ())
        if sm.args[1] not in (-1, rank - 1):
            continue
        chain, node = [], sm
        while node is not b.bmm2:
            if len(node.users) != 1:
                break
            node = next(iter(node.users))
            if node is not b.bmm2:
                chain.append(node)
        views = [n for n in chain if n.target in VIEWS - _UNARY]
        if node is not b.bmm2 or not views or any(n.target not in VIEWS | _UNARY for n in chain):
            continue
        if any(static_dim(v, -1) != static_dim(sm, -1) or static_dim(v, -1) is None for v in views):
            continue
        x = sm.args[0]
        with gm.graph.inserting_before(sm):
            for v in views:
                x = gm.graph.call_function(v.target, (x, *v.args[1:]), dict(v.kwargs))
                x.meta["val"] = fake_call(v.target, (x.args[0], *v.args[1:]), dict(v.kwargs))
                copy_module_stack(x, v)
            new_sm = gm.graph.call_function(sm.target, (x, *sm.args[1:]), dict(sm.kwargs))
            new_sm.meta["val"] = fake_call(sm.target, (x, *sm.args[1:]), dict(sm.kwargs))
            copy_module_stack(new_sm, sm)
        prev = new_sm
        for n in [n for n in chain if n not in views]:  # the unary ops, re-chained in order
            with gm.graph.inserting_before(b.bmm2):
                prev = gm.graph.call_function(n.target, (prev, *n.args[1:]), dict(n.kwargs))
            prev.meta["val"] = fake_call(n.target, (prev.args[0], *n.args[1:]), dict(n.kwargs))
            copy_module_stack(prev, n)
        b.bmm2.replace_input_with(chain[-1], prev)
        for n in [*reversed(chain), sm]:
            gm.graph.erase_node(n)
        moved += 1
    gm.recompile()
    return moved
