"""fxq's placement as a torchao PT2E Quantizer.

    gm = fxq.capture(model, example_inputs)          # torch.export + SDPA as matmuls
    prepared = prepare_pt2e(gm, FxqQuantizer())
    for batch in data: prepared(**batch)
    quantized = convert_pt2e(prepared, fold_quantize=False)

gives the same fp8_qdq nodes, at the same places, as fxq.quantize. torchao's contract: the graph is
reshaped in `transform_for_annotation` (fxq.capture.transforms.canonicalize, which fxq.capture.program already ran:
again it fires 0 times, and it records every site), `annotate` only reads (fxq.placement.place.place) and
writes annotations; torchao inserts observers; each observer's convert() emits fxq's fp8_qdq op.
"""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import ObserverBase
from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, QuantizationSpec, Quantizer,
                                                 SharedQuantizationSpec)

from fxq.conversion import ops
from fxq.config import QuantConfig, TensorSpec
from fxq.calibration.observers import make_observer
from fxq.placement.place import Placement, place
from fxq.capture.transforms import TransformCounts, canonicalize

_ANNOTATION = "quantization_annotation"


class FxqObserver(ObserverBase):
    """A torchao observer wrapping fxq's amax/percentile observers; converts to fxq.fp8_qdq."""

    def __init__(self, key: str = "", spec: TensorSpec = TensorSpec(), fixed_amax: float | None = None,
                 is_weight: bool = False, dtype=ops.FP8_DTYPE, tied: tuple[str, ...] = (), peers: dict | None = None,
                 **_):
        super().__init__(dtype=dtype)
        self.key, self.fixed_amax, self.is_weight = key, fixed_amax, is_weight
        # Weights always use max: clipping weights only loses accuracy.
        self.inner = make_observer(key, TensorSpec() if is_weight else spec)
        # Placement.tied: this site's scale is its group's (the largest amax); `peers` (one dict per annotate)
        # finds the group's other observers.
        self.tied, self.peers = tied, peers
        if peers is not None:
            peers[key] = self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.fixed_amax is not None else self.inner(x)

    def amax(self) -> float:
        if self.fixed_amax is not None:
            return self.fixed_amax
        if self.tied and self.peers is not None:
            return max(self.peers[k].inner.result() for k in self.tied if k in self.peers)
        return self.inner.result()

    def scale(self) -> float:
        """amax / 448; a weight's rounded up as fxq.quantize rounds it (ops.weight_scale_from_amax)."""
        return (ops.weight_scale_from_amax if self.is_weight else ops.scale_from_amax)(self.amax())

    def calculate_qparams(self):
        return torch.tensor([self.scale()]), torch.tensor([0])

    def convert(self, model: GraphModule, observer_node: Node) -> None:
        with model.graph.inserting_before(observer_node):
            qdq = model.graph.call_function(torch.ops.fxq.fp8_qdq.default,
                                            (observer_node.args[0], self.scale()))
        qdq.meta.update({k: v for k, v in observer_node.meta.items() if k != _ANNOTATION})
        qdq.meta["fxq_site"] = self.key
        observer_node.replace_all_uses_with(qdq)
        model.graph.erase_node(observer_node)


class FxqQuantizer(Quantizer):
    def __init__(self, config: QuantConfig | None = None):
        super().__init__()
        self.config = config or QuantConfig()
        self.placement: Placement | None = None
        self.transformed: TransformCounts | None = None  # what transform_for_annotation changed

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        if model.graph.find_nodes(op="call_function", target=torch.ops.aten.scaled_dot_product_attention.default):
            raise ValueError("the graph still has scaled_dot_product_attention; capture it with fxq.capture(model, "
                             "example_inputs), which rewrites SDPA into the matmul/softmax form fxq annotates")
        self.transformed = canonicalize(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        self.placement = place(model, self.config)
        nodes = {n.name: n for n in model.graph.nodes}
        tied_with = {k: group for group in self.placement.tied for k in group}
        peers: dict = {}
        for site in self.placement.sites:
            producer = nodes[site.node]
            ctr = FxqObserver.with_args(key=site.key, spec=site.spec, fixed_amax=site.fixed_amax,
                                        is_weight=site.is_weight, tied=tied_with.get(site.key, ()), peers=peers)
            spec = QuantizationSpec(dtype=ops.FP8_DTYPE, observer_or_fake_quant_ctr=ctr)
            first = nodes[site.consumers[0]]
            for i, name in enumerate(site.consumers):
                consumer = nodes[name]
                ann = consumer.meta.setdefault(_ANNOTATION, QuantizationAnnotation())
                ann.input_qspec_map[producer] = spec if i == 0 else SharedQuantizationSpec((producer, first))
                ann._annotated = True
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def qdq_sites(gm: GraphModule) -> dict[str, float]:
    """site key -> scale of every fxq quantizer in a graph: fp8_qdq nodes, and fp8_dequant of FP8 weights."""
    ops_ = (torch.ops.fxq.fp8_qdq.default, torch.ops.fxq.fp8_dequant.default)
    return {n.meta["fxq_site"]: n.args[1] for n in gm.graph.nodes if n.op == "call_function" and n.target in ops_}


