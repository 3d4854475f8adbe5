"""Record every site of a graph once: one matcher per kind, each writing one record kind into node meta.

The matchers run in this order at the end of capture (fxq.capture.transforms.canonicalize); the attention
matcher names a block's K projection by its GEMM record, so GEMMs go first. A new kind (conv is
next) is one more function here that writes one more record.
"""
from __future__ import annotations

from torch.fx import GraphModule

from fxq.placement.attention import record_attention
from fxq.placement.gemms import record_gemms
from fxq.graph_utils import aten, module_path
from fxq.placement.records import LAYER_NORM, RECORDED, GroupIds, LayerNormRecord

LAYER_NORMS = {aten.layer_norm.default, aten.native_layer_norm.default}


def record_layer_norms(gm: GraphModule) -> int:
    ids = GroupIds()
    recorded = 0
    for node in gm.graph.nodes:
        node.meta.pop(LAYER_NORM, None)
        if node.op == "call_function" and node.target in LAYER_NORMS:
            mod = module_path(node)
            node.meta[LAYER_NORM] = LayerNormRecord(ids.next(mod, "layer_norm"), mod)
            recorded += 1
    return recorded


MATCHERS = (record_gemms, record_attention, record_layer_norms)


def record_sites(gm: GraphModule) -> int:
    """Run every matcher on `gm` (replacing earlier records). Returns how many records were written."""
    written = sum(match(gm) for match in MATCHERS)
    gm.meta[RECORDED] = written
    return written
