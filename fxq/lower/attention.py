"""fxq.lower, pass 1: attention blocks -> one scaled_dot_product_attention or one FP8 attention op each.

BMM1 -> [scale, mask, casts] -> softmax -> [casts, dropout, probs Q/DQ] -> BMM2 becomes one call.
"fp16": SDPA (flash / cuDNN on a GPU); the softmax output stays FP16 (TensorRT's graph quantizes it at
1/448). "fp8": `torch.ops.fxq.fp8_attention` (fxq/kernels) with the block's q/k/v scales and the probs
quantizer's scale: the ONNX graph's numerics, on FP8 tensor cores where the Triton kernel runs.
Q already carries the attention scale; provably zero additive masks are dropped, real masks kept.
The blocks are the ones capture recorded in node meta (fxq.placement.attention.recorded_blocks): nothing is matched here.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from onnx_post import fp8

from fxq.graph_utils import aten, attr_value, constant_scalar
from fxq.kernels import EXACT_PROBS_DEFAULT, P_SCALE
from fxq.lower.attention_choice import AttentionResult, choose, hint_shape
from fxq.lower.ops import FP8_ATTENTION, QDQ, additive_mask, is_qdq, quantize_fp8, quantize_values
from fxq.placement.attention import CASTS, recorded_blocks

_PASS_THROUGH = CASTS | {aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default}


def _depends_on_data(node: Node) -> bool:
    """True when `node` reads a graph input's values (reading only its shape does not count)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if not isinstance(n, Node) or n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            return True
        if n.op == "call_function" and n.target in (aten.sym_size.int, aten.size.default):
            continue
        stack.extend(n.all_input_nodes)
    return False


def _evaluate(gm: GraphModule, node: Node):
    """Compute a node that reads no input values (parameters, constants, shapes at their example hints)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    needed, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        if not (n.op == "call_function" and n.target is aten.sym_size.int):
            stack.extend(n.all_input_nodes)
    env: dict[Node, object] = {}
    for n in sorted(needed, key=order.__getitem__):
        if n.op == "get_attr":
            env[n] = attr_value(gm, n.target)
        elif n.op == "call_function" and n.target is aten.sym_size.int:
            d = n.args[0].meta["val"].shape[n.args[1]]
            env[n] = d if isinstance(d, int) else int(d.node.hint)
        elif n.op == "call_function":
            args = torch.fx.node.map_arg(n.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(n.kwargs, env.__getitem__)
            env[n] = n.target(*args, **kwargs)
        else:
            return None
    return env[node]


def _provably(gm: GraphModule, mask, value) -> bool:
    """True when the mask is a constant equal to `value` everywhere (0 for additive, True for boolean)."""
    if not isinstance(mask, Node):
        return mask == value
    if _depends_on_data(mask):
        return False
    try:
        t = _evaluate(gm, mask)
    except Exception:  # anything we cannot evaluate is treated as a real mask
        return False
    return isinstance(t, torch.Tensor) and bool((t == value).all())


def _reaches(node, target: Node, depth: int = 12) -> bool:
    if node is target:
        return True
    if not isinstance(node, Node) or depth == 0 or node.op != "call_function":
        return False
    return any(_reaches(a, target, depth - 1) for a in node.all_input_nodes)


def _score_chain(b) -> tuple[float, object, str, str]:
    """Walk softmax input -> BMM1: (extra scale, mask, mask kind 'add'|'keep'|'', why-not or '')."""
    scale, mask, kind = 1.0, None, ""
    node = b.softmax.args[0]
    while node is not b.bmm1:
        if not isinstance(node, Node) or node.op != "call_function":
            return scale, mask, kind, "unexpected score input"
        t = node.target
        if t in CASTS:
            node = node.args[0]
            continue
        if t in (aten.mul.Tensor, aten.div.Tensor):
            path, other = (node.args[0], node.args[1]) if _reaches(node.args[0], b.bmm1) else (node.args[1], node.args[0])
            c = constant_scalar(other)
            if c is None or (t is aten.div.Tensor and path is not node.args[0]):
                return scale, mask, kind, "score scale is not a constant"
            scale = scale * c if t is aten.mul.Tensor else scale / c
            node = path
            continue
        if kind:
            return scale, mask, kind, "more than one mask"
        if t is aten.add.Tensor:
            path, other = (node.args[0], node.args[1]) if _reaches(node.args[0], b.bmm1) else (node.args[1], node.args[0])
            mask, kind, node = other, "add", path
        elif t is aten.masked_fill.Scalar and not _reaches(node.args[1], b.bmm1) and node.args[2] < -1e4:
            mask, kind, node = ("not", node.args[1]), "keep", node.args[0]
        elif t is aten.where.ScalarOther and not _reaches(node.args[0], b.bmm1) and node.args[2] < -1e4:
            mask, kind, node = node.args[0], "keep", node.args[1]
        else:
            return scale, mask, kind, f"score op {t} not understood"
    return scale, mask, kind, ""


def _probs_chain_ok(b) -> bool:
    node = b.softmax
    while node is not b.bmm2:
        user = next(iter(node.users))
        if user is not b.bmm2 and not (user.target in _PASS_THROUGH or user.target is QDQ):
            return False
        if user.target is aten.dropout.default and len(user.args) > 2 and user.args[2] and user.args[1] > 0:
            return False  # training-mode dropout: SDPA here runs dropout_p=0
        node = user
    return True


def _erase_block(b) -> None:
    """Erase the replaced BMM1 -> softmax -> BMM2 chain. DCE alone would keep it: aten.dropout counts as impure."""
    chain, node = [b.bmm2], b.bmm2.args[0]
    while node is not b.softmax:
        chain.append(node)
        node = node.args[0]
    chain.append(b.softmax)
    node = b.softmax.args[0]
    while isinstance(node, Node) and node is not b.bmm1:
        chain.append(node)
        node = next((a for a in node.all_input_nodes if _reaches(a, b.bmm1)), None)
    chain.append(b.bmm1)
    for n in chain:  # consumers first, so each is unused when its turn comes
        if not n.users:
            n.graph.erase_node(n)


def _probs_scale(b) -> float:
    """The probs quantizer's scale (1/448 by fxq's convention); P_SCALE where the probs carry none."""
    node = b.softmax
    while node is not b.bmm2:
        node = next(iter(node.users))
        if is_qdq(node):
            return float(node.args[1])
    return P_SCALE


def _fp8_block(g, b, q, kt, v, mask, sm_scale: float, dtype: torch.dtype, buffers) -> Node:
    """q/k/v quantized as plain ATen ops (Inductor fuses them into their producers), then the FP8 op.

    The scales are the graph-dtype-rounded values the ONNX graph stores (fp8.stored_scale)."""
    sq, sk, sv = (buffers.scale(float(t.args[1]), dtype, b.bmm2) for t in (q, kt, v))
    rounded = [fp8.stored_scale(float(t.args[1]), dtype) for t in (q, kt, v)]
    with g.inserting_before(b.bmm2):
        q8 = g.call_function(quantize_fp8, (q.args[0], sq))
        k8 = g.call_function(aten.transpose.int, (g.call_function(quantize_fp8, (kt.args[0], sk)), -2, -1))
        v8 = g.call_function(quantize_values, (v.args[0], sv))
        return g.call_function(FP8_ATTENTION, (q8, k8, v8, *rounded, mask, False, sm_scale, _probs_scale(b),
                                               EXACT_PROBS_DEFAULT, dtype))


def fuse_attention(gm: GraphModule, mode: str, dtype: torch.dtype, buffers,
                   keep_qkv_qdq: bool = False) -> AttentionResult:
    """Rewrite attention blocks as scaled_dot_product_attention (mode "fp16") or the FP8 op ("fp8"; "auto"
    picks per shape, fxq/lower/attention_choice.py). Blocks whose q, k, v carry no quantizer run fp16.

    keep_qkv_qdq=True keeps the q/k/v fake-quant in front of SDPA (closer to qm, slower); False drops it.
    """
    res = AttentionResult()
    g = gm.graph
    device = buffers.device
    for b in recorded_blocks(gm):  # the blocks capture recorded; a probs Q/DQ goes with its fused block
        scale, mask, kind, why = _score_chain(b)
        if not why and b.softmax.args[1] not in (-1, len(b.softmax.meta["val"].shape) - 1):
            why = "softmax not over the last dim"
        if not why and not _probs_chain_ok(b):
            why = "op between softmax and BMM2 not understood"
        if why:
            res.reasons.append(f"{b.module}: {why}")
            continue
        q, kt, v = b.bmm1.args[0], b.bmm1.args[1], b.bmm2.args[1]
        quantized = all(is_qdq(t) for t in (q, kt, v))
        path, reason = choose(mode, quantized, hint_shape(q), hint_shape(v), kind, dtype, device)
        if kind == "add" and _provably(gm, mask, 0.0):
            mask, res.zero_masks_dropped = None, res.zero_masks_dropped + 1
        elif kind == "keep":
            cond = mask[1] if isinstance(mask, tuple) else mask
            if _provably(gm, cond, not isinstance(mask, tuple)):
                mask, res.zero_masks_dropped = None, res.zero_masks_dropped + 1
        if path == "fp8":
            if kind == "keep" and mask is not None:
                with g.inserting_before(b.bmm2):  # masked_fill(cond, -inf) / where(keep, s, -inf) -> additive
                    mask = g.call_function(additive_mask, (mask[1], True) if isinstance(mask, tuple) else (mask, False))
            attn = _fp8_block(g, b, q, kt, v, mask, scale, dtype, buffers)
        else:
            if quantized and not keep_qkv_qdq:
                q, kt, v = q.args[0], kt.args[0], v.args[0]
            if not is_qdq(q) and isinstance(q, Node) and q.target is aten.mul.Tensor and len(q.users) == 1 \
                    and constant_scalar(q.args[1]) is not None:
                scale *= constant_scalar(q.args[1])  # an unquantized Q: let SDPA apply the scale
                q = q.args[0]
            with g.inserting_before(b.bmm2):
                k = g.call_function(aten.transpose.int, (kt, -2, -1))
                if isinstance(mask, tuple):  # masked_fill(cond, -inf): SDPA's boolean mask keeps where True
                    mask = g.call_function(aten.logical_not.default, (mask[1],))
                attn = g.call_function(aten.scaled_dot_product_attention.default, (q, k, v),
                                       {"attn_mask": mask, "dropout_p": 0.0, "is_causal": False, "scale": scale})
            res.fp8_qkv += quantized and keep_qkv_qdq
        attn.meta.update({key: b.bmm2.meta[key] for key in ("nn_module_stack", "val") if key in b.bmm2.meta})
        b.bmm2.replace_all_uses_with(attn)
        _erase_block(b)
        res.fused += 1
        res.choices.append((b.module, path, reason))
    g.eliminate_dead_code()
    gm.recompile()
    return res
