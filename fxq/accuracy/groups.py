"""Switch placement groups between FP8 and float on one quantized graph, and measure a metric.

Sensitivity and fallback both ask "what is the error with these groups left in float?" many
times. Re-capturing and re-calibrating for each answer would take minutes per question, so this
module edits one fake-quant view of the calibrated program (fxq/conversion/fake_quant_view.py) instead: a
group is left in float by making its consumers read the float node its quantizers stand for (the
view records it), and restored by putting the saved args back. Calibration results are unchanged
by this (observers run on the float graph), so the answer is the one a fresh placement without
that group would give.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.fx import GraphModule, Node

from fxq.calibration.run import device_of
from fxq.capture.program import Inputs
from fxq.conversion.fake_quant_view import FakeQuantView
from fxq.placement.place import Group, Placement
from fxq.verify import first_output

Metric = Callable[[object, object], float]


def one_minus_cosine(reference, quantized) -> float:
    """The default metric: 1 - cosine similarity of the first output, flattened over the batch."""
    r = first_output(reference).detach().double().flatten()
    q = first_output(quantized).detach().double().flatten()
    denom = r.norm() * q.norm()
    return float(1.0 - (r @ q) / denom) if denom > 0 else float(not torch.equal(r, q))


def check_metric(metric) -> Metric:
    if metric is None:
        return one_minus_cosine
    if not callable(metric):
        raise TypeError(f"metric must be a callable metric(reference_output, quantized_output) -> float, "
                        f"got {type(metric).__name__}")
    return metric


def _is_quantizer(node) -> bool:
    return isinstance(node, Node) and "fxq_site" in node.meta


@dataclass
class GroupEdges:
    """A group and the (quantizer node, consumer node) edges that leave it in float when cut."""

    group: Group
    edges: list[tuple[Node, Node]]


def group_edges(gm: GraphModule, placement: Placement, kinds=("attention", "gemm", "conv", "layer_norm")) -> list[GroupEdges]:
    """Every group of `kinds` that has at least one FP8 quantizer in `gm`, in graph order."""
    nodes = {n.name: n for n in gm.graph.nodes}
    out = []
    for g in placement.groups:
        if g.kind not in kinds:
            continue
        edges = []
        if g.kind == "layer_norm":
            ln = nodes[g.nodes[0]]
            for q in ln.users:
                if _is_quantizer(q):
                    edges += [(q, c) for c in q.users]
        else:
            for name in g.nodes:
                c = nodes[name]
                edges += [(q, c) for q in dict.fromkeys(c.all_input_nodes) if _is_quantizer(q)]
        if edges:
            out.append(GroupEdges(g, edges))
    return out


class Switch:
    """Leave sets of (quantizer, consumer) edges of a fake-quant view in float, temporarily.

    A consumer is rewired to the float node its quantizer stands for (FakeQuantView.float_of: the
    fp8_qdq's input, or the program's own float weight), and restored from its saved args after.
    """

    def __init__(self, view: FakeQuantView):
        self.gm = view.module
        self.float_of = view.float_of

    @contextlib.contextmanager
    def floated(self, edges: Iterable[tuple[Node, Node]]):
        saved = {}
        for q, c in edges:
            if c not in saved:
                saved[c] = (c.args, c.kwargs)
            c.replace_input_with(q, self.float_of[q])
        self.gm.recompile()
        try:
            yield
        finally:
            for c, (args, kwargs) in saved.items():
                c.args, c.kwargs = args, kwargs
            self.gm.recompile()

    def all_edges(self) -> list[tuple[Node, Node]]:
        """Every quantizer edge: floating them all gives the float program."""
        return [(q, c) for q in self.float_of for c in list(q.users)]


class Evaluator:
    """Reference outputs computed once (from `reference`: the float program, or any float module);
    `measure()` averages the metric of `gm` against them over the eval batches."""

    def __init__(self, reference: torch.nn.Module, gm: GraphModule, eval_data, metric: Metric | None):
        self.gm = gm
        self.metric = check_metric(metric)
        self.batches = _batches(eval_data, device_of(gm))
        with torch.no_grad():
            self.refs = [b.call(reference) for b in self.batches]
        self.calls = 0

    def head(self, n: int) -> "Evaluator":
        """This evaluator on its first n eval batches (the references are shared, not computed again)."""
        part = copy.copy(self)
        part.batches, part.refs, part.calls = self.batches[:n], self.refs[:n], 0
        return part

    def measure(self, run: Callable[[int], object] | None = None, indices: Iterable[int] | None = None,
                known: dict[int, float] | None = None) -> float:
        """The metric averaged over eval batches `indices` (default: all); run(i) gives batch i's output
        (default: a full forward of gm; fxq.accuracy.prefix computes the same from cached activations).
        known: batch index -> the metric of that batch, already measured for this same graph: used instead of
        running the batch, and filled in with the batches run (the sum is the same, in the same order)."""
        indices = list(range(len(self.batches)) if indices is None else indices)
        known = {} if known is None else known
        total = 0.0
        with torch.no_grad():
            for i in indices:
                if i not in known:
                    known[i] = self._value(i, run(i) if run else self.batches[i].call(self.gm))
                total += known[i]
        self.calls += 1
        return total / len(indices)

    def _value(self, i: int, output) -> float:
        value = self.metric(self.refs[i], output)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric returned {value!r} on eval batch {i + 1}; it must return a finite "
                             "float (lower is better), e.g. 1 - cosine of the outputs")
        return float(value)


def _batches(data, device) -> list[Inputs]:
    if isinstance(data, (torch.Tensor, dict)) or hasattr(data, "keys"):
        data = [data]  # one batch given directly
    try:
        batches = [Inputs.of(b).map(lambda t: t.to(device)) for b in data]
    except TypeError as e:
        raise TypeError(f"eval_data must be an iterable of batches shaped like example_inputs: {e}") from None
    if not batches:
        raise ValueError("eval_data is empty; fix: pass at least one batch (64 samples is typical)")
    return batches


def fp8_gemms(placement: Placement) -> list[Group]:
    """The GEMM groups that run in FP8: both operands (activation and weight) quantized."""
    reads_act = {c for s in placement.sites if not s.is_weight for c in s.consumers}
    reads_w = {c for s in placement.sites if s.is_weight for c in s.consumers}
    return [g for g in placement.groups if g.kind == "gemm" and g.nodes[0] in reads_act & reads_w]


def fp8_gemm_flop_share(placement: Placement) -> float:
    """The share of all GEMM FLOPs (per example batch) that run in FP8: both operands quantized."""
    total = sum(g.flops for g in placement.groups if g.kind == "gemm")
    return sum(g.flops for g in fp8_gemms(placement)) / total if total else 0.0


def fp8_convs(placement: Placement) -> list[Group]:
    """The conv groups that run in FP8: input and weight quantized."""
    reads_act = {c for s in placement.sites if not s.is_weight for c in s.consumers}
    reads_w = {c for s in placement.sites if s.is_weight for c in s.consumers}
    return [g for g in placement.groups if g.kind == "conv" and g.nodes[0] in reads_act & reads_w]


def fp8_attention_blocks(placement: Placement) -> int:
    probs_readers = {c for s in placement.sites if s.role == "attn.probs" for c in s.consumers}
    return sum(1 for g in placement.groups if g.kind == "attention" and g.nodes[1] in probs_readers)
