"""Run the onnx_post passes in order on an ONNX model; report how often each fired."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from . import IR_VERSION
from .passes.attention import move_scale_before_q, move_transpose_before_qdq
from .passes.casts import fold_cast_round_trips, remove_noop_casts, remove_widening_round_trips
from .passes.constants import fold_constant_weight_inputs
from .passes.masks import remove_zero_masks
from .passes.transposes import fuse_transpose_pairs
from .pending import Pending
from .passes.weights import fold_weight_quantize, pretranspose_weights, unshare_weight_dq
from .skeleton import infer_shapes

G_LOGGER.severity = G_LOGGER.ERROR  # its colour/FP8 warnings are noise for fxq users

PASSES = (
    fold_constant_weight_inputs,
    fold_weight_quantize,
    unshare_weight_dq,
    pretranspose_weights,
    remove_noop_casts,
    remove_widening_round_trips,
    fold_cast_round_trips,
    remove_zero_masks,
    fuse_transpose_pairs,
    move_scale_before_q,
    move_transpose_before_qdq,
)


def run_passes(graph: gs.Graph, passes=PASSES) -> dict[str, int]:
    counts = {}
    for p in passes:
        counts[p.__name__] = p(graph)
        graph.cleanup()
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return counts


def run_pipeline(model: onnx.ModelProto, passes=PASSES, pending: Pending | None = None,
                 ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """pending: the registry of the model's stub tensors (onnx_post/pending.py), whose values the passes
    load one at a time when they read them; the output holds stubs for them and for what passes derive."""
    infer_shapes(model)  # shapes and dtypes on every tensor let passes check broadcasting
    graph = gs.import_onnx(model)
    if pending is not None:
        pending.attach(graph)
    counts = run_passes(graph, passes)
    out = gs.export_onnx(graph, do_type_check=True)
    # graphsurgeon drops node metadata; keep the exporter's module scopes for the checker's report.
    meta = {n.name: n.metadata_props for n in model.graph.node if n.metadata_props}
    for node in out.graph.node:
        if node.name in meta:
            node.metadata_props.extend(meta[node.name])
    out.ir_version = IR_VERSION
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    return out, counts
