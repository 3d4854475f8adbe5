"""Place: decide which tensors get an FP8 quantizer, by role, from graph structure alone.

Finding is kept apart from changing: `place()` only reads the graph (after the canonical
rewrites: probs views above the softmax, attention scale onto Q) and returns a Placement;
fxq/insert.py turns it into nodes.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch.fx import GraphModule, Node

from . import roles as R
from .attention import find_attention_blocks, move_scale_to_q, move_views_before_softmax
from .config import QuantConfig, TensorSpec
from .errors import ConfigError
from .graph_utils import aten, matmul_flops, module_path, shape_of, state_name, static_dim

LAYER_NORMS = {aten.layer_norm.default, aten.native_layer_norm.default}


@dataclass(frozen=True)
class Site:
    """One quantizer: the tensor produced by `node`, read quantized by `consumers`."""

    key: str  # "<module>:<role>", "#n" appended where a module has several of one role
    role: str
    module: str
    node: str
    consumers: tuple[str, ...]
    spec: TensorSpec
    is_weight: bool

    @property
    def fixed_amax(self) -> float | None:
        return R.FIXED_AMAX.get(self.role)


@dataclass(frozen=True)
class Skip:
    """Something fxq left in float, and why (a stable reason code plus detail)."""

    module: str
    what: str  # a role name, "gemm" or "attention"
    reason: str
    detail: str = ""


SKIP_REASONS = {
    "small_gemm": "GEMM with K or N below config.min_gemm_dim: FP8 gains nothing on it in TensorRT",
    "head_size_out_of_window": "attention head size outside TensorRT's FP8 MHA window (16..256, multiple of 8)",
    "gemv": "GEMM whose rows are only the batch (a pooler, a classifier on one token, a timestep embedding): "
    "FP8 gains nothing on a matrix-vector product and its Q/DQ cost time (config.skip_gemv)",
    "disabled_by_config": "the config sets this role to None for this module",
    "probs_without_qkv": "softmax output left in float because Q, K or V is not quantized "
    "(a lone softmax Q/DQ blocks TensorRT's attention fusion)",
    "fallback": "left in FP16 by the budgeted fallback (fxq.Fallback): FP8 here cost the most accuracy per FLOP",
}


@dataclass(frozen=True)
class Group:
    """What sensitivity and fallback act on: one GEMM, one attention block, or one LayerNorm output.

    `id` is "<module>:gemm", "<module>:attention" or "<module>:layer_norm" ("#n" appended where a
    module has several); QuantConfig.fallback names GEMM and attention ids.
    """

    id: str
    kind: str  # "gemm", "attention" or "layer_norm"
    module: str
    nodes: tuple[str, ...]  # gemm: (gemm,); attention: (bmm1, bmm2); layer_norm: (layer_norm,)
    flops: int = 0  # matmul FLOPs per example batch (0 for layer_norm)


class _GroupIds:
    def __init__(self):
        self.seen: Counter = Counter()

    def next(self, module: str, kind: str) -> str:
        base = f"{module}:{kind}"
        self.seen[base] += 1
        return base if self.seen[base] == 1 else f"{base}#{self.seen[base] - 1}"


@dataclass
class Placement:
    sites: list[Site] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    gemms: int = 0
    attention_blocks: int = 0
    scales_moved_to_q: int = 0
    views_moved_before_softmax: int = 0

    def count(self, role: str) -> int:
        return sum(1 for s in self.sites if s.role == role)

    def role_counts(self) -> dict[str, int]:
        return dict(Counter(s.role for s in self.sites))

    def keys(self) -> list[str]:
        return [s.key for s in self.sites]


@dataclass
class _Request:
    producer: Node
    consumer: Node
    role: str
    module: str
    fallback: bool = False  # left in FP16 by QuantConfig.fallback: still numbered, so keys stay stable


def _gemm_operands(node: Node):
    """(input, weight, K, N) for linear-like GEMMs with a parameter weight, else None."""
    if node.target is aten.linear.default:  # the weight may be computed from parameters (MHA's in_proj split)
        x, w = node.args[0], node.args[1]
        n, k = static_dim(w, 0), static_dim(w, 1)
    elif node.target is aten.addmm.default and state_name(node.args[2]) is not None:
        x, w = node.args[1], node.args[2]  # HF Conv1D: addmm(bias, x, W[in, out])
        k, n = static_dim(w, 0), static_dim(w, 1)
    elif node.target in (aten.matmul.default, aten.mm.default) and state_name(node.args[1]) is not None \
            and len(node.args[1].meta["val"].shape) == 2:
        x, w = node.args[0], node.args[1]  # x @ W[in, out]
        k, n = static_dim(w, 0), static_dim(w, 1)
    else:
        return None
    return x, w, k, n


def _is_gemv(x: Node) -> bool:
    """Rows of the GEMM = the batch alone: every dim of x but dim 0 (batch) and the last (K) is 1."""
    shape = shape_of(x)
    return shape is not None and len(shape) >= 2 and all(isinstance(d, int) and d == 1 for d in shape[1:-1])


def _head_size_ok(hs: int | None, cfg: QuantConfig) -> bool:
    return hs is not None and cfg.head_size_min <= hs <= cfg.head_size_max and hs % cfg.head_size_multiple == 0


def _reads_attention_output(x: Node, bmm2s: set[Node], depth: int = 6) -> bool:
    """x is an attention block's BMM2 output, through head-merging views (an O-projection's input)."""
    while isinstance(x, Node) and depth > 0:
        if x in bmm2s:
            return True
        if x.op != "call_function" or not x.args:
            return False
        x, depth = x.args[0], depth - 1
    return False


def _requests(gm: GraphModule, cfg: QuantConfig, out: Placement) -> list[_Request]:
    reqs: list[_Request] = []
    ids = _GroupIds()
    blocks = find_attention_blocks(gm)
    out.views_moved_before_softmax = move_views_before_softmax(gm, blocks)
    if out.views_moved_before_softmax:
        blocks = find_attention_blocks(gm)  # the softmax nodes were replaced
    out.attention_blocks = len(blocks)
    bmm2s = {b.bmm2 for b in blocks}
    gemms = [(node, ops) for node in gm.graph.nodes if node.op == "call_function" and (ops := _gemm_operands(node))]
    # Batch-only rows are GEMV-shaped next to token GEMMs (a transformer's pooler or head); in a
    # plain MLP on [batch, features] every GEMM has them, and those are the model's real GEMMs.
    # An attention block's O-projection stays FP8 even then: TensorRT's FP8 MHA wants its input Q/DQ.
    has_token_gemms = any(not _is_gemv(ops[0]) for _, ops in gemms)
    for node, ops in gemms:
        x, w, k, n = ops
        out.gemms += 1
        mod = module_path(node)
        gid = ids.next(mod, "gemm")
        out.groups.append(Group(gid, "gemm", mod, (node.name,), matmul_flops(node)))
        if k is None or n is None or k < cfg.min_gemm_dim or n < cfg.min_gemm_dim:
            out.skips.append(Skip(mod, "gemm", "small_gemm", f"K={k} N={n} < {cfg.min_gemm_dim}"))
            continue
        if cfg.skip_gemv and has_token_gemms and _is_gemv(x) and not _reads_attention_output(x, bmm2s):
            out.skips.append(Skip(mod, "gemm", "gemv", f"input shape {list(shape_of(x))}"))
            continue
        fb = gid in cfg.fallback
        if fb:
            out.skips.append(Skip(mod, "gemm", "fallback", gid))
        reqs += [_Request(x, node, R.LINEAR_INPUT, mod, fb), _Request(w, node, R.LINEAR_WEIGHT, mod, fb)]

    out.scales_moved_to_q = move_scale_to_q(gm, blocks)
    for b in blocks:
        gid = ids.next(b.module, "attention")
        out.groups.append(Group(gid, "attention", b.module, (b.bmm1.name, b.bmm2.name),
                                matmul_flops(b.bmm1) + matmul_flops(b.bmm2)))
        if not _head_size_ok(b.head_size, cfg):
            out.skips.append(Skip(b.module, "attention", "head_size_out_of_window", f"head size {b.head_size}"))
            continue
        fb = gid in cfg.fallback
        if fb:
            out.skips.append(Skip(b.module, "attention", "fallback", gid))
        qkv = [(b.bmm1.args[0], b.bmm1, R.ATTN_Q), (b.bmm1.args[1], b.bmm1, R.ATTN_K), (b.bmm2.args[1], b.bmm2, R.ATTN_V)]
        reqs += [_Request(p, c, role, b.module, fb) for p, c, role in qkv]
        if all(cfg.spec_for(b.module, role) is not None for role in (R.ATTN_Q, R.ATTN_K, R.ATTN_V)):
            reqs.append(_Request(b.bmm2.args[0], b.bmm2, R.ATTN_PROBS, b.module, fb))
        elif not fb:
            out.skips.append(Skip(b.module, R.ATTN_PROBS, "probs_without_qkv"))
    return reqs


def place(gm: GraphModule, config: QuantConfig | None = None) -> Placement:
    """Find every FP8 site in `gm`. Only graph changes: attention scales onto Q, probs views above softmax."""
    cfg = config or QuantConfig()
    out = Placement()
    groups: dict[Node, list[_Request]] = {}
    requests = _requests(gm, cfg, out)
    _check_fallback_ids(cfg, out)
    ln_ids = _GroupIds()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in LAYER_NORMS:
            out.groups.append(Group(ln_ids.next(module_path(node), "layer_norm"), "layer_norm",
                                    module_path(node), (node.name,)))
    for req in requests:
        if req.producer.op == "call_function" and req.producer.target in LAYER_NORMS:
            # A LayerNorm output feeding GEMMs gets one shared quantizer named for the LayerNorm.
            req = _Request(req.producer, req.consumer, R.LAYER_NORM_OUTPUT, module_path(req.producer), req.fallback)
        if cfg.spec_for(req.module, req.role) is None:
            if not req.fallback:
                out.skips.append(Skip(req.module, req.role, "disabled_by_config"))
            continue
        groups.setdefault(req.producer, []).append(req)

    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    seen: Counter = Counter()
    for producer in sorted(groups, key=order.__getitem__):  # graph order keeps keys stable
        reqs = groups[producer]
        first = reqs[0]
        base = f"{first.module}:{first.role}"
        seen[base] += 1
        key = base if seen[base] == 1 else f"{base}#{seen[base] - 1}"
        consumers = tuple(dict.fromkeys(r.consumer.name for r in reqs if not r.fallback))
        if not consumers:  # every reader fell back; its key stays taken, so other keys don't shift
            continue
        out.sites.append(Site(key, first.role, first.module, producer.name, consumers,
                              cfg.spec_for(first.module, first.role), state_name(producer) is not None))
    return out


def _check_fallback_ids(cfg: QuantConfig, out: Placement) -> None:
    known = {g.id for g in out.groups}
    unknown = [i for i in cfg.fallback if i not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=3, cutoff=0.5)
        raise ConfigError(f"QuantConfig.fallback names {len(unknown)} GEMM/attention groups not in this graph, "
                          f"e.g. {unknown[0]!r}" + (f"; close ids: {', '.join(close)}" if close else "")
                          + "; fix: take ids from fxq.sensitivity(...) or Placement.groups of this model")
