"""Place: decide which tensors get an FP8 quantizer, by role, from the sites capture recorded.

Finding is kept apart from changing: capture shapes the graph and records every GEMM, attention
block and LayerNorm in node meta (fxq/capture/transforms.py, fxq/placement/matchers.py); `place()` only reads those
records, applies the config (skips, fallback, overrides) and returns a Placement, whose sites
fxq/conversion/insert.py turns into nodes.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from torch.fx import GraphModule, Node

from fxq.placement import records
from fxq import roles as R
from fxq.placement.attention import recorded_blocks
from fxq.placement.convs import MAX_FP8_CONV_FILTER
from fxq.config import QuantConfig, TensorSpec
from fxq.errors import ConfigError
from fxq.graph_utils import shape_of, state_name
from fxq.placement.records import AttentionRecord, ConvRecord, GemmRecord
from fxq.placement.tied import tied_sites
from fxq.capture.transforms import COUNTS, TransformCounts


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
    what: str  # a role name, "gemm", "attention" or "conv"
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
    # TensorRT's FP8 convolution rules (fxq/placement/convs.py cites where they come from).
    "conv_grouped": "grouped or depthwise convolution (groups > 1): TensorRT has no FP8 kernel for it, "
    "it stays in float",
    "conv_channels_not_16": "convolution whose input or output channels are not a multiple of 16 (an RGB stem, "
    "a 4-channel latent): TensorRT's FP8 convolution kernels need both, it stays in float",
    "conv_kernel_too_large": "convolution whose filter has more than 32 taps (a 7x7 kernel): TensorRT has "
    "no FP8 kernel for it (NVIDIA ModelOpt leaves these in float), it stays in float",
    "fallback": "left in FP16 by the budgeted fallback (fxq.Fallback): FP8 here cost the most accuracy per FLOP",
}


@dataclass(frozen=True)
class Group:
    """What sensitivity and fallback act on: one GEMM, one attention block, or one LayerNorm output.

    `id` is "<module>:gemm", "<module>:attention" or "<module>:layer_norm" ("#n" appended where a
    module has several); QuantConfig.fallback names GEMM and attention ids.
    """

    id: str
    kind: str  # "gemm", "attention", "conv" or "layer_norm"
    module: str
    nodes: tuple[str, ...]  # gemm: (gemm,); attention: (bmm1, bmm2); conv: (conv,); layer_norm: (layer_norm,)
    flops: int = 0  # matmul / conv FLOPs per example batch (0 for layer_norm)


@dataclass
class Placement:
    sites: list[Site] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    gemm_records: list[GemmRecord] = field(default_factory=list)  # every GEMM capture recorded, in graph order
    attention_records: list[AttentionRecord] = field(default_factory=list)  # each block's record (part "bmm1")
    conv_records: list[ConvRecord] = field(default_factory=list)
    gemms: int = 0
    attention_blocks: int = 0
    convs: int = 0
    # Activation sites that share one scale, the largest amax: a split attention output's O-projection inputs
    # (fxq/placement/tied.py finds them and says why; insert_qdq applies the tie, the calibration keeps each amax).
    tied: list[tuple[str, ...]] = field(default_factory=list)
    scales_moved_to_q: int = 0  # what capture's transforms did (fxq.capture.transforms.TransformCounts)
    views_moved_before_softmax: int = 0
    einsums_to_permute: int = 0

    def count(self, role: str) -> int:
        return sum(1 for s in self.sites if s.role == role)

    def role_counts(self) -> dict[str, int]:
        return dict(Counter(s.role for s in self.sites))

    def keys(self) -> list[str]:
        return [s.key for s in self.sites]

    def gemm_record(self, node: str) -> GemmRecord:
        """The record of the GEMM node named `node` (a site's consumer)."""
        return next(r for r in self.gemm_records if r.node == node)

    def weight_is_kn(self, node: str) -> bool:
        """True where the weight read by `node` is stored [K, N] (addmm, x @ W); a conv's [out, in, ...] is not."""
        return any(r.node == node and not r.weight_nk for r in self.gemm_records)


@dataclass
class _Request:
    producer: Node
    consumer: Node
    role: str
    module: str
    fallback: bool = False  # left in FP16 by QuantConfig.fallback: still numbered, so keys stay stable


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
    blocks = recorded_blocks(gm)
    out.attention_blocks = len(blocks)
    bmm2s = {b.bmm2 for b in blocks}
    gemms = records.gemms(gm)
    # Batch-only rows are GEMV-shaped next to token GEMMs (a transformer's pooler or head); in a
    # plain MLP on [batch, features] every GEMM has them, and those are the model's real GEMMs.
    # An attention block's O-projection stays FP8 even then: TensorRT's FP8 MHA wants its input Q/DQ.
    has_token_gemms = any(not _is_gemv(r.input(node)) for node, r in gemms)
    for node, r in gemms:
        x, w, k, n = r.input(node), r.weight_of(node), r.k, r.n
        out.gemms += 1
        out.gemm_records.append(r)
        out.groups.append(Group(r.group, "gemm", r.module, (node.name,), r.flops))
        if k is None or n is None or k < cfg.min_gemm_dim or n < cfg.min_gemm_dim:
            out.skips.append(Skip(r.module, "gemm", "small_gemm", f"K={k} N={n} < {cfg.min_gemm_dim}"))
            continue
        if cfg.skip_gemv and has_token_gemms and _is_gemv(x) and not _reads_attention_output(x, bmm2s):
            out.skips.append(Skip(r.module, "gemm", "gemv", f"input shape {list(shape_of(x))}"))
            continue
        fb = r.group in cfg.fallback
        if fb:
            out.skips.append(Skip(r.module, "gemm", "fallback", r.group))
        reqs += [_Request(x, node, R.LINEAR_INPUT, r.module, fb), _Request(w, node, R.LINEAR_WEIGHT, r.module, fb)]

    for b in blocks:
        a = b.record
        out.attention_records.append(a)
        out.groups.append(Group(a.group, "attention", a.module, (b.bmm1.name, b.bmm2.name), a.flops))
        if not _head_size_ok(a.head_size, cfg):
            out.skips.append(Skip(a.module, "attention", "head_size_out_of_window", f"head size {a.head_size}"))
            continue
        fb = a.group in cfg.fallback
        if fb:
            out.skips.append(Skip(a.module, "attention", "fallback", a.group))
        qkv = [(b.bmm1, a.Q_ARG, R.ATTN_Q), (b.bmm1, a.K_ARG, R.ATTN_K), (b.bmm2, a.V_ARG, R.ATTN_V)]
        reqs += [_Request(c.args[i], c, role, a.module, fb) for c, i, role in qkv]
        if all(cfg.spec_for(a.module, role) is not None for role in (R.ATTN_Q, R.ATTN_K, R.ATTN_V)):
            reqs.append(_Request(b.bmm2.args[a.PROBS_ARG], b.bmm2, R.ATTN_PROBS, a.module, fb))
        elif not fb:
            out.skips.append(Skip(a.module, R.ATTN_PROBS, "probs_without_qkv"))
    return reqs + _conv_requests(gm, cfg, out)


def conv_skip_reason(r: ConvRecord) -> tuple[str, str] | None:
    """TensorRT's FP8 convolution rules: (reason code, detail) for a conv that stays in float, else None."""
    if r.groups != 1:
        return "conv_grouped", f"groups={r.groups}"
    if r.in_channels % 16 or r.out_channels % 16:
        return "conv_channels_not_16", f"in={r.in_channels} out={r.out_channels}"
    if math.prod(r.kernel) > MAX_FP8_CONV_FILTER:
        return "conv_kernel_too_large", f"kernel {'x'.join(map(str, r.kernel))}"
    return None


def _conv_requests(gm: GraphModule, cfg: QuantConfig, out: Placement) -> list[_Request]:
    """A conv runs in FP8 with both operands quantized or not at all: a lone input Q/DQ only costs time."""
    reqs = []
    for node, r in records.convs(gm):
        out.convs += 1
        out.conv_records.append(r)
        out.groups.append(Group(r.group, "conv", r.module, (node.name,), r.flops))
        rule = conv_skip_reason(r)
        if rule is not None:
            out.skips.append(Skip(r.module, "conv", *rule))
            continue
        if any(cfg.spec_for(r.module, role) is None for role in (R.CONV_INPUT, R.CONV_WEIGHT)):
            out.skips.append(Skip(r.module, "conv", "disabled_by_config"))
            continue
        fb = r.group in cfg.fallback
        if fb:
            out.skips.append(Skip(r.module, "conv", "fallback", r.group))
        reqs += [_Request(r.input(node), node, R.CONV_INPUT, r.module, fb),
                 _Request(r.weight_of(node), node, R.CONV_WEIGHT, r.module, fb)]
    return reqs


def place(gm: GraphModule, config: QuantConfig | None = None) -> Placement:
    """Find every FP8 site in `gm` from the records capture wrote (fxq/placement/matchers.py). Changes nothing."""
    records.require(gm)
    cfg = config or QuantConfig()
    counts = gm.meta.get(COUNTS) or TransformCounts()
    out = Placement(scales_moved_to_q=counts.scales_moved_to_q,
                    views_moved_before_softmax=counts.views_moved_before_softmax,
                    einsums_to_permute=counts.einsums_to_permute)
    groups: dict[Node, list[_Request]] = {}
    requests = _requests(gm, cfg, out)
    _check_fallback_ids(cfg, out)
    for node, ln in records.recorded(gm, records.LAYER_NORM):
        out.groups.append(Group(ln.group, "layer_norm", ln.module, (node.name,)))
    for req in requests:
        ln = req.producer.meta.get(records.LAYER_NORM)
        if ln is not None:
            # A LayerNorm output feeding GEMMs gets one shared quantizer named for the LayerNorm.
            req = _Request(req.producer, req.consumer, R.LAYER_NORM_OUTPUT, ln.module, req.fallback)
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
    out.tied = tied_sites(gm, out.sites)
    return out


def _check_fallback_ids(cfg: QuantConfig, out: Placement) -> None:
    known = {g.id for g in out.groups}
    unknown = [i for i in cfg.fallback if i not in known]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=3, cutoff=0.5)
        raise ConfigError(f"QuantConfig.fallback names {len(unknown)} GEMM/attention/conv groups not in this graph, "
                          f"e.g. {unknown[0]!r}" + (f"; close ids: {', '.join(close)}" if close else "")
                          + "; fix: take ids from fxq.sensitivity(...) or Placement.groups of this model")
